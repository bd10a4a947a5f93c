package agent

import (
	"net/http"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/swarm"
)

// metricsHandler serves /metrics from a registry of this agent's own (no
// global registry: several agents can run in one process): the deploy
// state of every service, read from a status snapshot at scrape time, and
// the Go runtime and process collectors (memory, goroutines, open files,
// CPU), which the fault suite's soak test reads.
func (a *Agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), statusCollector{a})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

var allStates = []core.State{core.StateIdle, core.StateFetching, core.StateVerifying, core.StateReady,
	core.StateDraining, core.StateActive, core.StateFailed}

var (
	descMembers     = prometheus.NewDesc("shoal_members", "Cluster members this agent sees.", nil, nil)
	descState       = prometheus.NewDesc("shoal_service_state", "1 for the state each service is in.", []string{"service", "state"}, nil)
	descInfo        = prometheus.NewDesc("shoal_service_info", "Live and desired build of each service.", []string{"service", "current", "desired", "previous"}, nil)
	descFetched     = prometheus.NewDesc("shoal_fetch_bytes_total", "Piece bytes received by this host, all builds.", []string{"service"}, nil)
	descProgress    = prometheus.NewDesc("shoal_fetch_progress_bytes", "Verified bytes of the last fetch, by source for received bytes.", []string{"service", "build", "kind"}, nil)
	descUploaded    = prometheus.NewDesc("shoal_upload_bytes_total", "Piece bytes this host served to peers, by build.", []string{"service", "build"}, nil)
	descTransitions = prometheus.NewDesc("shoal_state_transitions", "Recent state transitions kept in history.", []string{"service"}, nil)
	descBanned      = prometheus.NewDesc("shoal_banned_peers", "Peers banned for sending pieces that failed their hash check.", nil, nil)
	descBadPieces   = prometheus.NewDesc("shoal_peer_bad_pieces_total", "Pieces received that failed their hash check, by sender.", []string{"peer"}, nil)
	descStalled     = prometheus.NewDesc("shoal_fetch_stalled", "1 while a fetch makes no progress, by cause (no_peers, pieces_nobody_has, origin_gone, peers_silent, write_error).", []string{"service", "build", "cause"}, nil)
	descEvents      = prometheus.NewDesc("shoal_swarm_events_total", "The swarm's work since start: peer messages received by type, requests sent, connections, peer offers, memory returned to the OS (memory_trims), piece bytes read back from disk to hash (piece_bytes_read_back), bytes served to peers straight from files (sendfile_bytes).", []string{"event"}, nil)
	descInsecure    = prometheus.NewDesc("shoal_insecure_dev", "1 if the agent runs in insecure dev mode (unsigned builds, plain gossip).", nil, nil)
)

// statusCollector turns a status snapshot into metrics at scrape time.
type statusCollector struct{ a *Agent }

func (statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descState, descInfo, descFetched, descProgress, descUploaded, descTransitions, descBanned, descBadPieces, descStalled, descEvents, descInsecure} {
		ch <- d
	}
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.fullStatus()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descMembers, float64(st.Members))
	gauge(descBanned, float64(len(st.BannedPeers)))
	gauge(descInsecure, map[bool]float64{true: 1}[st.Insecure])
	for k, v := range st.Counters {
		counter(descEvents, float64(v), k)
	}
	for _, b := range st.BadPieces {
		counter(descBadPieces, float64(b.Count), b.Peer)
	}
	for _, s := range st.Services {
		for _, state := range allStates {
			gauge(descState, map[bool]float64{true: 1}[s.State == state], s.Service, string(state))
		}
		gauge(descInfo, 1, s.Service, s.Current, s.Desired, s.Previous)
		counter(descFetched, float64(s.BytesReceived), s.Service)
		gauge(descTransitions, float64(len(s.History)), s.Service)
		if f := s.Fetch; f != nil {
			for kind, v := range map[string]int64{"have": f.Have, "total": f.Total, "from_origin": f.FromOrigin, "from_peers": f.FromPeers} {
				gauge(descProgress, float64(v), s.Service, f.Build, kind)
			}
			if f.Stall != "" {
				gauge(descStalled, 1, s.Service, f.Build, f.Stall)
			}
		}
	}
	seeds := append([]swarm.Seed(nil), st.Seeds...)
	sort.Slice(seeds, func(i, j int) bool { return seeds[i].Build < seeds[j].Build })
	for _, s := range seeds {
		counter(descUploaded, float64(s.Uploaded), s.Service, s.Build)
	}
}
