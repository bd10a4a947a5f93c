package swarm

import (
	"strings"
	"sync/atomic"

	"github.com/anacrolix/torrent"
	pp "github.com/anacrolix/torrent/peer_protocol"
)

// Counters of what a host's work is made of, to see what grows with the
// fleet: messages received by type, requests sent, connections opened and
// closed, peer offers made by the refresh loop. Cumulative since start.
type counters struct {
	recv                                [24]atomic.Int64 // by peer-protocol message type
	keepalive, requests, opened, closed atomic.Int64
	refreshes, offered                  atomic.Int64
	trims                               atomic.Int64 // idle trims, trim.go
	readBack                            atomic.Int64 // piece bytes read back to hash, pieces.go
	sendfile                            atomic.Int64 // bytes served to peers by sendfile, sendfile.go
}

func (s *Swarm) onRead(_ *torrent.PeerConn, m *pp.Message) {
	switch {
	case m.Keepalive:
		s.count.keepalive.Add(1)
	case int(m.Type) < len(s.count.recv):
		s.count.recv[m.Type].Add(1)
	}
}

func (s *Swarm) onSentRequest(torrent.PeerRequestEvent) { s.count.requests.Add(1) }
func (s *Swarm) onConnAdded(*torrent.PeerConn)          { s.count.opened.Add(1) }

// Counters returns the counters by name (recv_have, recv_bitfield,
// recv_request, recv_piece, …, requests_sent, conns_opened, conns_closed,
// peer_refreshes, peers_offered, memory_trims, piece_bytes_read_back,
// sendfile_bytes, piece_db_writes); zero ones are left out.
func (s *Swarm) Counters() map[string]int64 {
	out := map[string]int64{}
	put := func(k string, v int64) {
		if v != 0 {
			out[k] = v
		}
	}
	for t := range s.count.recv {
		put("recv_"+strings.ToLower(pp.MessageType(t).String()), s.count.recv[t].Load())
	}
	put("recv_keepalive", s.count.keepalive.Load())
	put("requests_sent", s.count.requests.Load())
	put("conns_opened", s.count.opened.Load())
	put("conns_closed", s.count.closed.Load())
	put("peer_refreshes", s.count.refreshes.Load())
	put("peers_offered", s.count.offered.Load())
	put("memory_trims", s.count.trims.Load())
	put("piece_bytes_read_back", s.count.readBack.Load())
	put("sendfile_bytes", s.count.sendfile.Load())
	put("piece_db_writes", s.pc.writes.Load())
	return out
}
