package swarm

import (
	"errors"
	"fmt"
	"math/bits"
	"net"
	"time"

	"github.com/shoal-deploy/shoal/core"
)

// Config sets up one node of the swarm.
type Config struct {
	// Node is this host's unique name in the cluster. Required.
	Node string `json:"node"`
	// BindAddr is the IP address gossip and chunk transfer listen on and
	// advertise. Required; must be reachable by the other hosts.
	BindAddr string `json:"bind"`
	// GossipPort is memberlist's TCP+UDP port. Default 7946.
	GossipPort int `json:"gossip_port,omitempty"`
	// TorrentPort is the chunk-transfer TCP port. Default 6881.
	TorrentPort int `json:"torrent_port,omitempty"`
	// Join lists gossip addresses (host or host:port) of any existing
	// members. Empty: this node starts a cluster of its own.
	Join []string `json:"join,omitempty"`
	// PeerAPIAddr is the agent's peer API address (piece ranges, the
	// origin's hand-out, fleet status), advertised to the cluster. Members
	// reach it on the member's gossip IP only.
	PeerAPIAddr string `json:"-"`
	// SecretKeys encrypt and authenticate gossip (memberlist's AES keys,
	// 16/24/32 bytes) and key the MAC on peer API requests. The first
	// encrypts and signs; every one is accepted, so a fleet can rotate
	// keys without a partition. Empty only in dev mode: then any process
	// that can reach the gossip port can join.
	SecretKeys [][]byte `json:"-"`
	// DataDir holds the build archives and the piece-completion database.
	DataDir string `json:"-"`
	// UploadRate and DownloadRate cap chunk traffic in bytes per second; 0 is unlimited.
	UploadRate   int64 `json:"upload_rate,omitempty"`
	DownloadRate int64 `json:"download_rate,omitempty"`
	// MaxPeers caps connections per build, both directions. Default 50.
	MaxPeers int `json:"max_peers,omitempty"`
	// PeerSet is how many members a fetching host dials for one build: a
	// random sample of the membership, topped up as connections close, so
	// a host's connections (those it dials plus those dialed to it, about
	// twice this on average) and the per-peer work that comes with them
	// are bounded by it, not by the size of the fleet. 0 (the default)
	// follows the fleet: PeerSetFor(members), 5 up to 63 members and one
	// more per doubling. At most MaxPeers.
	PeerSet int `json:"peer_set,omitempty"`
	// PeerRefresh is how often each fetching transfer's peer set is topped
	// up (a peer offered before it had the build is not retried by the
	// torrent engine on its own). Default 2s.
	PeerRefresh core.Duration `json:"peer_refresh,omitempty"`
	// ScrubInterval is how often one complete build this host shares is
	// re-hashed piece by piece (in turn); pieces that no longer match are
	// fetched again from peers. Default 1h; negative turns it off.
	ScrubInterval core.Duration `json:"scrub_interval,omitempty"`
	// JoinRetry is how often to retry joining while no other member is known. Default 2s.
	JoinRetry core.Duration `json:"join_retry,omitempty"`
	// Handout tunes how the origin hands out a build's first copy (see
	// handout.go).
	Handout Handout `json:"handout,omitzero"`
	// TreeDir, when set, says where a build whose metainfo carries its
	// release layout is fetched to: the directory that the install turns
	// into the release (on the release store's file system), and whether
	// it already is the installed release (then the swarm only reads it).
	// Each file's bytes are then written once, straight into place,
	// instead of into an archive that is unpacked afterwards. Nil: every
	// build is fetched as an archive.
	TreeDir func(service, build string) (dir string, installed bool) `json:"-"`
	// Gossip picks memberlist timings: "lan" (default, tuned for up to a
	// few hundred hosts) or "local" (fast failure detection for tests).
	Gossip string `json:"gossip,omitempty"`
}

func (c *Config) applyDefaults() {
	if c.GossipPort == 0 {
		c.GossipPort = 7946
	}
	if c.TorrentPort == 0 {
		c.TorrentPort = 6881
	}
	if c.MaxPeers == 0 {
		c.MaxPeers = 50
	}
	if c.PeerRefresh == 0 {
		c.PeerRefresh = core.Duration(2 * time.Second)
	}
	if c.ScrubInterval == 0 {
		c.ScrubInterval = core.Duration(time.Hour)
	}
	if c.JoinRetry == 0 {
		c.JoinRetry = core.Duration(2 * time.Second)
	}
	if c.Gossip == "" {
		c.Gossip = "lan"
	}
	c.Handout.applyDefaults()
}

// minPeerSet is the smallest peer set PeerSetFor picks.
const minPeerSet = 5

// PeerSetFor is the default peer set in a fleet of n members: 5 up to
// 63 members, then floor(log2 n): 6 from 64, 10 from 1,024, 13 from
// 8,192. A host's connections and the per-peer work that comes with them
// (HAVEs, request bookkeeping, and uploads spread over more connections
// at once, each sent in smaller packets) grow with the set; the
// overlay's reach per round grows with it too, which a big fleet needs
// and a small one does not. On the bench (100 MB, 10 MB/s, 20 and 40
// hosts on two cores, the same hour) a set of 5 cost 0.84 × and 0.83 ×
// the machine CPU of a set of 10, and its last host was no slower;
// `shoal model` puts the slowest of 10,000 hosts at 1.27 × the bound
// with this set, 1.31 × with a fixed 10 (docs/BENCHMARKS.md, "A peer
// set that follows the fleet").
func PeerSetFor(n int) int {
	return max(minPeerSet, bits.Len(uint(max(n, 0)))-1)
}

// peerSet is the peer set a fetching host keeps in a fleet of n
// members: PeerSet if set, else PeerSetFor(n); at most MaxPeers.
func (c Config) peerSet(n int) int {
	set := c.PeerSet
	if set == 0 {
		set = PeerSetFor(n)
	}
	return min(set, c.MaxPeers)
}

// Validate reports config errors.
func (c Config) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("swarm: node name is required (--node)"))
	}
	if ip := net.ParseIP(c.BindAddr); ip == nil || ip.IsUnspecified() {
		errs = append(errs, fmt.Errorf("swarm: bind address %q must be one concrete IP the other hosts can reach (--bind)", c.BindAddr))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("swarm: data dir is required"))
	}
	if c.MaxPeers < 0 || c.PeerSet < 0 {
		errs = append(errs, errors.New("swarm: max_peers and peer_set must not be negative"))
	}
	if c.UploadRate < 0 || c.DownloadRate < 0 {
		errs = append(errs, errors.New("swarm: rates must not be negative"))
	}
	if err := c.Handout.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Gossip != "" && c.Gossip != "lan" && c.Gossip != "local" {
		errs = append(errs, fmt.Errorf("swarm: gossip profile %q: use lan or local", c.Gossip))
	}
	return errors.Join(errs...)
}
