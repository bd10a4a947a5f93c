package trust

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// ErrPeerAuth: a request between agents is not from a fleet member.
var ErrPeerAuth = errors.New("not authenticated as a fleet member")

// MaxClockSkew is how far a peer request's time may be from this host's.
// A captured request can be replayed only from a member's own address
// (the agent checks that too) and only within this window.
const MaxClockSkew = 2 * time.Minute

// Header names of an authenticated peer request.
const (
	HeaderNode = "Shoal-Node"
	HeaderDate = "Shoal-Date"
	HeaderAuth = "Shoal-Auth"
)

// PeerAuth signs and checks requests between agents (the data API: piece
// ranges, the origin's hand-out, fleet status). The MAC key is derived
// from the gossip key, so exactly the hosts that can join the gossip can
// talk to each other's data API. Without a gossip key (dev mode) requests
// name their node but prove nothing; the agent then relies on the
// sender's address being a member's.
type PeerAuth struct {
	keys [][]byte // MAC keys, the first signs; none in dev mode
	node string
}

// NewPeerAuth makes the authenticator for node from the gossip keys (the
// first signs, all are accepted); none means dev mode.
func NewPeerAuth(gossipKeys [][]byte, node string) *PeerAuth {
	a := &PeerAuth{node: node}
	for _, k := range gossipKeys {
		h := hmac.New(sha256.New, k)
		h.Write([]byte("shoal peer api v1"))
		a.keys = append(a.keys, h.Sum(nil))
	}
	return a
}

// Secure reports whether requests carry a MAC (a gossip key is set).
func (a *PeerAuth) Secure() bool { return len(a.keys) > 0 }

func (a *PeerAuth) mac(key []byte, r *http.Request, node, date string) string {
	h := hmac.New(sha256.New, key)
	for _, s := range []string{r.Method, r.URL.EscapedPath(), r.Header.Get("Range"), node, date} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Sign adds this node's credentials to r. Set any Range header first.
func (a *PeerAuth) Sign(r *http.Request) {
	date := strconv.FormatInt(time.Now().Unix(), 10)
	r.Header.Set(HeaderNode, a.node)
	r.Header.Set(HeaderDate, date)
	if a.Secure() {
		r.Header.Set(HeaderAuth, a.mac(a.keys[0], r, a.node, date))
	}
}

// Check returns the node name r claims, after checking its MAC and time.
// The caller must still check that the node is a current member and that
// r came from that member's address.
func (a *PeerAuth) Check(r *http.Request, now time.Time) (string, error) {
	node, date := r.Header.Get(HeaderNode), r.Header.Get(HeaderDate)
	if node == "" || date == "" {
		return "", fmt.Errorf("%w: no %s/%s headers", ErrPeerAuth, HeaderNode, HeaderDate)
	}
	if !a.Secure() {
		return node, nil
	}
	sec, err := strconv.ParseInt(date, 10, 64)
	if err != nil {
		return "", fmt.Errorf("%w: bad %s", ErrPeerAuth, HeaderDate)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > MaxClockSkew || d < -MaxClockSkew {
		return "", fmt.Errorf("%w: request time is %s off this host's clock (limit %s); check NTP", ErrPeerAuth, d.Round(time.Second), MaxClockSkew)
	}
	got := []byte(r.Header.Get(HeaderAuth))
	for _, k := range a.keys {
		if hmac.Equal(got, []byte(a.mac(k, r, node, date))) {
			return node, nil
		}
	}
	return "", fmt.Errorf("%w: bad %s (a different gossip key?)", ErrPeerAuth, HeaderAuth)
}
