package bench

import (
	"fmt"
	"io"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strconv"
	"text/tabwriter"

	"github.com/shoal-deploy/shoal/swarm"
)

// The model: what a deploy would cost past the fleets this machine can
// run. Two simulations, both seeded and deterministic:
//
//  1. The swarm, piece by piece, in rounds of one piece time (τ = piece
//     length / upload cap). Every host dials PeerSet random others (the
//     connections it keeps are those plus the ones dialed to it); each
//     round every host uploads at most one piece, to a neighbour that lacks
//     it (the rarer of a few candidates, as rarest-first does), and
//     downloads at most one (caps up = down, as in the bench). The origin
//     hands out each piece once, one per round, to a host with a free
//     download, then seeds like anyone. A piece received in a round is
//     forwarded from the next (store and forward). The lower bound is
//     P rounds (P pieces through each host's download); what the model
//     adds is the pipeline: the rounds a piece needs to cross the peer
//     graph, and the rounds lost where no neighbour has what a host lacks.
//  2. memberlist's gossip of one membership change: each node that knows
//     it tells GossipNodes random nodes per GossipInterval until it has
//     sent it RetransmitMult × ceil(log10(N+1)) times in all (memberlist's
//     retransmit limit); what gossip misses, push/pull (every 5 s scaled
//     by ceil(log2 N − 5) + 1 above 32 nodes) repairs.
//
// Per-host work is then counted, not timed: HAVE messages = pieces ×
// connections, bitfields = connections, requests = size / chunk; with a
// bounded peer set none depends on N. Host CPU per GB comes from the
// bench (a measured constant), not from the model.

// ModelConfig is one model run.
type ModelConfig struct {
	Hosts   []int   // fleet sizes
	Size    int64   // build bytes
	Up      float64 // per-host cap, bytes/s (up = down)
	PeerSet int     // members each host dials; 0 follows the fleet as the agent's default does (swarm.PeerSetFor)
	Seed    uint64
	// HostCPUPerGB is the measured host CPU-s per GB received (from the
	// bench), to turn counts into CPU; 0 leaves it out.
	HostCPUPerGB float64
}

// ModelResult is one fleet size.
type ModelResult struct {
	N           int
	PeerSet     int // members each host dials
	Pieces      int
	PieceLength int64
	Bound       float64 // fluid bound S/u, seconds
	// Completion of the hosts (p50, p99, p99.9, the last) as a multiple of
	// the bound.
	P50x, P99x, P999x, MaxX       float64
	DegreeMean                    float64 // connections per host
	DegreeMax                     int
	HavesPerHost, RequestsPerHost float64
	OriginX                       float64 // origin upload / S
	GossipRounds                  int     // gossip intervals until no node had the fact left to send
	GossipMissed                  int     // nodes gossip never reached (push/pull does)
	PushPullInterval              float64 // seconds
	HostCPUSeconds                float64
}

// Model runs the simulations for every fleet size.
func Model(cfg ModelConfig) []ModelResult {
	var out []ModelResult
	for _, n := range cfg.Hosts {
		out = append(out, modelOne(cfg, n))
	}
	return out
}

func modelOne(cfg ModelConfig, n int) ModelResult {
	pl := swarm.PieceLength(cfg.Size, n)
	p := int((cfg.Size + pl - 1) / pl)
	tau := float64(pl) / cfg.Up
	r := ModelResult{N: n, Pieces: p, PieceLength: pl, Bound: float64(cfg.Size) / cfg.Up}
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(n)))
	r.PeerSet = cfg.PeerSet
	if r.PeerSet == 0 {
		r.PeerSet = swarm.PeerSetFor(n)
	}
	sw := newSwarmSim(n, p, r.PeerSet, rng)
	rounds, originSent := sw.run()
	done := make([]float64, n) // × the bound
	for i, d := range rounds {
		done[i] = float64(d) * tau / r.Bound
	}
	r.P50x, r.P99x, r.P999x, r.MaxX = Percentile(done, 50), Percentile(done, 99), Percentile(done, 99.9), slices.Max(done)
	deg := 0
	for _, a := range sw.adj {
		deg += len(a)
		r.DegreeMax = max(r.DegreeMax, len(a))
	}
	r.DegreeMean = float64(deg) / float64(n)
	r.HavesPerHost = float64(p) * r.DegreeMean
	r.RequestsPerHost = float64(cfg.Size) / float64(swarm.ChunkSize(pl))
	r.OriginX = float64(originSent) / float64(p)
	r.GossipRounds, r.GossipMissed = gossipSim(n, rng)
	r.PushPullInterval = pushPullInterval(n)
	if cfg.HostCPUPerGB > 0 {
		r.HostCPUSeconds = cfg.HostCPUPerGB * float64(cfg.Size) / 1e9
	}
	return r
}

type swarmSim struct {
	n, p, words int
	adj         [][]int32
	have        []uint64 // n × words
	count       []int32  // holders per piece
	rng         *rand.Rand
}

func newSwarmSim(n, p, peerSet int, rng *rand.Rand) *swarmSim {
	s := &swarmSim{n: n, p: p, words: (p + 63) / 64, rng: rng, count: make([]int32, p)}
	s.have = make([]uint64, n*s.words)
	edges := make([]map[int32]bool, n)
	for i := range edges {
		edges[i] = map[int32]bool{}
	}
	k := min(peerSet, n-1)
	for i := 0; i < n; i++ {
		for len(edges[i]) < k { // i dials k distinct others; a dial is a connection both ways
			j := int32(rng.IntN(n))
			if int(j) != i && !edges[i][j] {
				edges[i][j], edges[j][int32(i)] = true, true
			}
		}
	}
	s.adj = make([][]int32, n)
	for i, e := range edges {
		for j := range e {
			s.adj[i] = append(s.adj[i], j)
		}
		slices.Sort(s.adj[i]) // map order is random: keep runs reproducible
	}
	return s
}

func (s *swarmSim) row(i int) []uint64 { return s.have[i*s.words : (i+1)*s.words] }

// run simulates until every host has every piece and returns the round in
// which each host completed and how many pieces the origin sent.
func (s *swarmSim) run() ([]int, int) {
	done := make([]int, s.n)
	left := s.n
	handed, originSent := 0, 0
	type gift struct{ to, piece int32 }
	var gifts []gift
	downUsed := make([]bool, s.n)
	order := make([]int, s.n)
	for i := range order {
		order[i] = i
	}
	cand := make([]uint64, s.words)
	for round := 1; left > 0; round++ {
		gifts = gifts[:0]
		clear(downUsed)
		s.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		// The origin: the next piece nobody was given, to a host with a free
		// download; once all are out, what a random needy host lacks.
		for tries := 0; tries < s.n; tries++ {
			h := order[tries]
			if done[h] != 0 || downUsed[h] {
				continue
			}
			var pc int
			if handed < s.p {
				pc = handed
				handed++
			} else {
				pc = s.firstMissing(h)
			}
			downUsed[h] = true
			gifts = append(gifts, gift{int32(h), int32(pc)})
			originSent++
			break
		}
		for _, h := range order {
			mine := s.row(h)
			nb := s.adj[h]
			start := s.rng.IntN(max(len(nb), 1))
			for k := range nb {
				to := int(nb[(start+k)%len(nb)])
				if downUsed[to] || done[to] != 0 {
					continue
				}
				theirs := s.row(to)
				anyCand := false
				for w := range cand {
					cand[w] = mine[w] &^ theirs[w]
					anyCand = anyCand || cand[w] != 0
				}
				if !anyCand {
					continue
				}
				downUsed[to] = true
				gifts = append(gifts, gift{int32(to), int32(s.rarest(cand))})
				break
			}
		}
		for _, g := range gifts {
			row := s.row(int(g.to))
			w, b := int(g.piece)/64, uint(g.piece)%64
			if row[w]&(1<<b) == 0 {
				row[w] |= 1 << b
				s.count[g.piece]++
			}
			if done[g.to] == 0 && s.complete(int(g.to)) {
				done[g.to] = round
				left--
			}
		}
	}
	return done, originSent
}

func (s *swarmSim) complete(h int) bool {
	n := 0
	for _, w := range s.row(h) {
		n += bits.OnesCount64(w)
	}
	return n == s.p
}

func (s *swarmSim) firstMissing(h int) int {
	for w, x := range s.row(h) {
		if ^x != 0 {
			if i := w*64 + bits.TrailingZeros64(^x); i < s.p {
				return i
			}
		}
	}
	return 0
}

// rarest picks the least-held of up to 8 candidates from a random start.
func (s *swarmSim) rarest(cand []uint64) int {
	best, bestN, seen := -1, int32(math.MaxInt32), 0
	start := s.rng.IntN(len(cand))
	for k := 0; k < len(cand) && seen < 8; k++ {
		w := (start + k) % len(cand)
		for x := cand[w]; x != 0 && seen < 8; x &= x - 1 {
			i := w*64 + bits.TrailingZeros64(x)
			seen++
			if s.count[i] < bestN {
				best, bestN = i, s.count[i]
			}
		}
	}
	return best
}

// gossipInterval is memberlist's GossipInterval as Shoal sets it, seconds.
const gossipInterval = 0.1

// gossipSim spreads one fact with memberlist's defaults as Shoal sets
// them (GossipNodes 4 per 100 ms, RetransmitMult 6) and returns the
// rounds until no node is left to send it, and how many never heard it.
func gossipSim(n int, rng *rand.Rand) (rounds, missed int) {
	limit := 6 * int(math.Ceil(math.Log10(float64(n+1))))
	sends := make([]int, n) // -1: does not know yet
	for i := range sends {
		sends[i] = -1
	}
	sends[0] = 0
	knows := 1
	for active := true; active; rounds++ {
		active = false
		var told []int
		for i, c := range sends {
			if c < 0 || c >= limit {
				continue
			}
			for k := 0; k < 4 && sends[i] < limit; k++ {
				j := rng.IntN(n)
				sends[i]++
				if j != i {
					told = append(told, j)
				}
			}
			active = true
		}
		for _, j := range told {
			if sends[j] < 0 {
				sends[j] = 0
				knows++
			}
		}
	}
	return rounds, n - knows
}

// pushPullInterval is memberlist's push/pull period for n nodes (5 s base).
func pushPullInterval(n int) float64 {
	if n <= 32 {
		return 5
	}
	return 5 * (math.Ceil(math.Log2(float64(n))-math.Log2(32)) + 1)
}

// WriteModel prints the model's table.
func WriteModel(w io.Writer, cfg ModelConfig, rs []ModelResult) error {
	set := "following the fleet (the agent's default)"
	if cfg.PeerSet > 0 {
		set = strconv.Itoa(cfg.PeerSet)
	}
	fmt.Fprintf(w, "model: %s build, %.0f MB/s up and down per host, peer set %s, seed %d\n",
		fmtBytes(cfg.Size), cfg.Up/1e6, set, cfg.Seed)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\tpeer set\tpieces\tbound s\tp50\tp99\tp99.9\tmax (× bound)\tconns/host mean\tmax\tHAVEs/host\trequests/host\torigin sent\tgossip to all\tmissed\tpush/pull every\thost CPU s\t")
	for _, r := range rs {
		cpu := "-"
		if r.HostCPUSeconds > 0 {
			cpu = fmt.Sprintf("%.1f", r.HostCPUSeconds)
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%.2f\t%.2f\t%.2f\t%.2f\t%.1f\t%d\t%.0f\t%.0f\t%.2f×S\t%.1fs\t%d\t%.0fs\t%s\t\n",
			r.N, r.PeerSet, r.Pieces, r.Bound, r.P50x, r.P99x, r.P999x, r.MaxX, r.DegreeMean, r.DegreeMax,
			r.HavesPerHost, r.RequestsPerHost, r.OriginX, float64(r.GossipRounds)*gossipInterval, r.GossipMissed, r.PushPullInterval, cpu)
	}
	return tw.Flush()
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	default:
		return fmt.Sprintf("%.0f MB", float64(n)/1e6)
	}
}
