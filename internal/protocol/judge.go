// Judging sessions in a recovery scan: docs/PROTOCOL.md, "Sessions".

package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// judge decides, once per scan, which sessions are alive. It lists
// sessions/ at most once, and ends (deletes, conditionally) a session that is
// stale by the server's clock, so that its holder's next renewal fails and
// tells it that its claims may be gone.
type judge struct {
	p       *Protocol
	listed  map[string]time.Duration // token → age of its last write, by the server's clock
	listErr error
	verdict map[string]bool // token → ended
}

// list reads sessions/ once.
func (j *judge) list(ctx context.Context) {
	if j.listed != nil || j.listErr != nil {
		return
	}
	listed := map[string]time.Duration{}
	j.listErr = j.p.store.List(ctx, j.p.cfg.Layout.Dir(store.Sessions), func(page store.Page) error {
		for _, o := range page.Objects {
			if tok, ok := j.p.cfg.Layout.ID(store.Sessions, o.Key); ok {
				listed[tok] = page.ServerTime.Sub(o.LastModified)
			}
		}
		return nil
	})
	if j.listErr == nil {
		j.listed = listed
	}
}

// alive reports whether the listing shows session tok renewed within ttl.
func (j *judge) alive(ctx context.Context, tok string, ttl time.Duration) bool {
	j.list(ctx)
	age, ok := j.listed[tok]
	return j.listErr != nil || ok && age <= staleAfter(ttl) // unknown is not "no"
}

// ended reports whether session tok has ended, ending it if it is stale.
func (j *judge) ended(ctx context.Context, tok string, ttl time.Duration) bool {
	if v, ok := j.verdict[tok]; ok {
		return v
	}
	if j.p.session != nil && j.p.session.owns(tok) {
		return false // ours is alive while we act; stale, it is ended by others
	}
	v := !j.alive(ctx, tok, ttl) && j.p.endSession(ctx, tok, ttl)
	if j.verdict == nil {
		j.verdict = map[string]bool{}
	}
	j.verdict[tok] = v
	return v
}

// collect ends the stale sessions of nodes that died holding no lease, which
// nothing else would judge. Sessions of a ttl longer than ours are read and
// left alone.
func (j *judge) collect(ctx context.Context) {
	j.list(ctx)
	for tok, age := range j.listed {
		if age > staleAfter(j.p.cfg.TTL) && !(j.p.session != nil && j.p.session.owns(tok)) {
			j.ended(ctx, tok, j.p.cfg.TTL)
		}
	}
}

// endSession ends session tok if it is stale: a delete conditional on the
// version judged, so a renewal that lands first keeps it alive. It reports
// whether the session is gone. A node that has not reached the store for a
// ttl itself leaves it for now (see Session.patient).
func (p *Protocol) endSession(ctx context.Context, tok string, ttl time.Duration) bool {
	if !p.patient() {
		return false
	}
	key := p.cfg.Layout.Key(store.Sessions, tok)
	o, err := p.store.Get(ctx, key, MaxLeaseBytes)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return true
	case err != nil:
		return false
	}
	var l leaseBody
	if json.Unmarshal(o.Body, &l) == nil && l.TTLMillis > 0 {
		ttl = max(l.ttl(), MinTTL)
	}
	age := o.ServerTime.Sub(o.LastModified)
	if age <= staleAfter(ttl) {
		return false
	}
	err = p.store.DeleteWritten(ctx, key, store.Version{ETag: o.ETag, Modified: o.LastModified, ID: o.VersionID})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return false // renewed first, or unknown: judged again next scan
	}
	p.cfg.Metrics.SessionEnded()
	p.log.Warn("recovery: ended a stale session; its leases are taken over", "event", "session.ended",
		"holder", l.Node, "session", tok, "session_age_ms", age.Milliseconds())
	return true
}

// patient reports whether this node may judge others stale (see
// Session.patient; an agent without a session: reachability). A queue tool,
// without a session, does not recover.
func (p *Protocol) patient() bool {
	if p.session != nil {
		return p.session.patient()
	}
	return p.reach.patient(p.clock.Now(), p.cfg.TTL)
}

// ownLeft reports whether the lease of id held by token is one this
// node let go while it named our session; take forgets it.
func (p *Protocol) ownLeft(id, token string, take bool) bool {
	return p.session != nil && p.session.wasLeft(id, token, take)
}

// leaseCache remembers what recovery read of leases, by key and ETag: a
// lease naming a session is never renewed, so its ETag stays while it runs,
// and a scan need not read it again to know which session it names.
type leaseCache struct {
	mu sync.Mutex
	m  map[string]seenLease
}

type seenLease struct {
	etag, session, token string
	ttl                  time.Duration
}

func (c *leaseCache) get(key, etag string) (seenLease, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[key]
	return s, ok && s.etag == etag
}

func (c *leaseCache) put(key, etag string, l leaseBody) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]seenLease{}
	}
	c.m[key] = seenLease{etag: etag, session: l.Session, token: l.Token, ttl: max(l.ttl(), MinTTL)}
}

// keepOnly forgets every lease not in listed.
func (c *leaseCache) keepOnly(listed []store.Object) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := make(map[string]seenLease, len(listed))
	for _, o := range listed {
		if s, ok := c.m[o.Key]; ok {
			keep[o.Key] = s
		}
	}
	c.m = keep
}
