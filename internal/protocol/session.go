// Sessions: docs/PROTOCOL.md, "Sessions" (one heartbeat per agent, whatever
// the number of claims it holds).

package protocol

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Session is an agent's liveness: one object, sessions/<token>.json, renewed
// by compare-and-swap every ttl/3 however many claims the agent holds. Each
// lease the agent writes names the session instead of being renewed, and a
// claim is valid exactly while the session is. A recoverer ends a stale
// session (a conditional delete) before it takes over any lease naming it, so
// the agent's next renewal learns at once that its claims may be gone: it
// starts a new session and moves each lease still its own to it (a
// compare-and-swap on the lease), and the claims whose leases were taken over
// are lost.
type Session struct {
	p      *Protocol
	ctx    context.Context // ends with Close: stops restarts and moves
	cancel context.CancelFunc

	mu  sync.Mutex
	obj *Claim // the session's own object, kept like a lease; nil while a new one is made
	// until is the end of obj's validity, pushed to every claim it vouches for.
	until time.Time
	// claims maps each claim the session vouches for to the session token
	// its lease names; one naming an ended session is moved before it is valid.
	claims map[*Claim]string
	// left maps the tokens of claims dropped while their leases name a
	// live session of ours (or whose create may still land): nobody else
	// would ever take them over, so this node's own recovery does.
	left map[string]leftLease
	// steady is when renewals began to land without a failure between;
	// zero while they fail. A recoverer waits a ttl of it (see patient).
	steady time.Time
	// creating counts, by spec id, the leases naming the session being
	// created: a ring for such an id waits for its claim (see answer).
	creating map[string]int
}

// errNoSession: the agent's session is not valid now (the store has not
// answered in time): it starts nothing new.
var errNoSession = errors.New("session not valid: the store has not answered in time")

// StartSession creates this agent's session; from then on every lease the
// protocol writes names it. Close ends it.
func (p *Protocol) StartSession(ctx context.Context) (*Session, error) {
	s := &Session{p: p, claims: map[*Claim]string{}, left: map[string]leftLease{}, creating: map[string]int{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.create(ctx); err != nil {
		s.cancel()
		return nil, err
	}
	p.session = s
	return s, nil
}

// create writes a new session object (create-only) and starts its keeper.
func (s *Session) create(ctx context.Context) error {
	p := s.p
	l := leaseBody{Node: p.cfg.Node, Token: newToken(), Epoch: 1, TTLMillis: p.cfg.TTL.Milliseconds(),
		State: stateAlive, Intent: intentSession}
	l.Origin = l.Token
	key := p.cfg.Layout.Key(store.Sessions, l.Token)
	body, nonce := encodeLease(&l, p.clock.Now())
	sent := p.clock.Now()
	etag, err := p.store.Put(ctx, key, body, store.PutOptions{IfAbsent: true})
	if errors.Is(err, store.ErrUnknown) {
		etag, err = p.readBack(ctx, key, l.Token, nonce)
	}
	if err != nil {
		return fmt.Errorf("create session %s: %w", key, err)
	}
	c := p.newHolder(key, l.Token, l, etag)
	c.owner = s
	c.log = p.log.With("session", l.Token)
	s.mu.Lock()
	s.obj, s.steady = c, sent
	s.mu.Unlock()
	c.renewed(etag, sent)
	c.startKeeper()
	c.log.Info("session started", "event", "session.started")
	return nil
}

// current returns the session's token and the end of its validity, if it
// is valid now.
func (s *Session) current() (token string, until time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.obj == nil || !s.p.clock.Now().Before(s.until) {
		return "", time.Time{}, false
	}
	return s.obj.token, s.until, true
}

// Valid reports whether the session is valid now: the store answered its
// renewals in time. While it is not, the agent's cells are frozen.
func (s *Session) Valid() bool {
	_, _, ok := s.current()
	return ok
}

// patient reports whether this node has reached the store continuously for a
// ttl: only then does it judge another node's session or lease stale, so
// that after an outage every holder gets a ttl to renew first.
func (s *Session) patient() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.steady.IsZero() && s.p.clock.Now().Sub(s.steady) >= s.p.cfg.TTL
}

// renewed is told by the session object's keeper that a renewal sent at sent
// landed: every claim naming the session is valid as long as it is.
func (s *Session) renewed(obj *Claim, sent time.Time) {
	s.mu.Lock()
	if obj != s.obj {
		s.mu.Unlock()
		return
	}
	if s.steady.IsZero() {
		s.steady = sent
	}
	if until := sent.Add(validFor(s.p.cfg.TTL)); until.After(s.until) {
		s.until = until
	}
	until := s.until
	var vouched []*Claim
	for c, tok := range s.claims {
		if tok == obj.token {
			vouched = append(vouched, c)
		}
	}
	s.mu.Unlock()
	for _, c := range vouched {
		c.extend(until)
	}
}

// owns reports whether tok is this session's current token.
func (s *Session) owns(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.obj != nil && s.obj.token == tok
}

// faltered is told that a renewal failed.
func (s *Session) faltered() {
	s.mu.Lock()
	s.steady = time.Time{}
	s.mu.Unlock()
}

// lost is told that the session object is gone or another's: a recoverer
// ended it. A new session is made and every claim moved to it, or lost.
func (s *Session) lost(obj *Claim) {
	s.mu.Lock()
	if obj != s.obj {
		s.mu.Unlock()
		return
	}
	s.obj, s.steady = nil, time.Time{}
	s.mu.Unlock()
	obj.log.Warn("session ended by another node; each claim is checked before it goes on", "event", "session.lost")
	go s.restart()
}

func (s *Session) restart() {
	for try := 0; ; try++ {
		ctx, cancel := context.WithTimeout(s.ctx, s.p.cfg.TTL/3)
		err := s.create(ctx)
		cancel()
		if err == nil {
			break
		}
		s.p.log.Warn("new session not created; retrying", "event", "session.create_retry", "err", err)
		if s.p.sleep(s.ctx, min(time.Duration(100<<min(try, 6))*time.Millisecond, s.p.cfg.TTL/3)) != nil {
			return
		}
	}
	s.mu.Lock()
	tok := s.obj.token
	var moving []*Claim
	for c, t := range s.claims {
		if t != tok {
			moving = append(moving, c)
		}
	}
	s.mu.Unlock()
	for _, c := range moving {
		go s.move(c, tok)
	}
}

// vouch makes the session vouch for c, whose lease names session token tok.
func (s *Session) vouch(c *Claim, tok string) {
	s.mu.Lock()
	s.claims[c] = tok
	obj, until := s.obj, s.until
	s.mu.Unlock()
	switch {
	case obj != nil && obj.token == tok:
		c.extend(until)
	case obj != nil:
		go s.move(c, obj.token) // written naming a session that has since ended
	}
}

// move rewrites c's lease to name session tok (a compare-and-swap on the
// lease: if a recoverer took it over first, c is lost). Until it lands, c is
// not valid. Safe at any time: a lease that names a live session is taken
// over by nobody.
func (s *Session) move(c *Claim, tok string) {
	for try := 0; s.ctx.Err() == nil; try++ {
		done, err := s.moveOnce(c, tok)
		if done {
			return
		}
		c.log.Warn("lease not moved to the new session; retrying", "event", "session.move_retry", "err", err)
		if s.p.sleep(s.ctx, min(time.Duration(100<<min(try, 6))*time.Millisecond, s.p.cfg.TTL/3)) != nil {
			return
		}
	}
}

func (s *Session) moveOnce(c *Claim, tok string) (done bool, err error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	s.mu.Lock()
	obj := s.obj
	_, vouched := s.claims[c]
	s.mu.Unlock()
	if c.ended || !vouched || obj == nil || obj.token != tok {
		return true, nil // ended, dropped, or a newer session moves it
	}
	c.mu.Lock()
	if c.lost {
		c.mu.Unlock()
		return true, nil
	}
	c.lease.Session = tok
	l, etag := c.lease, c.etag
	c.mu.Unlock()
	err = c.writeLease(s.ctx, l, etag)
	switch {
	case errors.Is(err, ErrLost):
		c.log.Warn("lease taken over while the session was ended; this node leaves the spec alone", "event", "lease.lost")
		c.markLost()
		return true, nil
	case err != nil:
		return false, err
	}
	s.mu.Lock()
	if _, ok := s.claims[c]; ok {
		s.claims[c] = tok
	}
	// Valid only under the session the lease names: if tok ended while the
	// move was on its way, until is a newer session's, and the move to that
	// one (queued by its restart) makes the claim valid again, or lost.
	current := s.obj != nil && s.obj.token == tok
	until := s.until
	s.mu.Unlock()
	c.log.Info("lease moved to the new session", "event", "session.lease_moved")
	if current {
		c.extend(until)
	}
	return true, nil
}

// creatingLease notes that a lease of id naming the session is being
// created; the returned func is called once its claim is vouched for, or
// there is none.
func (s *Session) creatingLease(id string) (done func()) {
	s.mu.Lock()
	s.creating[id]++
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.creating[id]--; s.creating[id] <= 0 {
			delete(s.creating, id)
		}
		s.mu.Unlock()
	}
}

// forget stops vouching for c; left: its lease still names our session,
// so our own recovery takes it over.
func (s *Session) forget(c *Claim, left bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.claims, c)
	if left {
		s.left[c.token] = leftLease{id: c.id, at: s.p.clock.Now()}
	}
}

// leftLease is a lease of ours that only we would recover.
type leftLease struct {
	id string
	at time.Time
	// absent is when recovery last read the lease and found it not held
	// with this token (gone, or another's); zero if it never could.
	absent time.Time
}

// leftFor is how long after a lease was let go a write of it may still
// land: a lease PUT is signed in its headers (not presigned), and the store
// accepts one up to 15 minutes after its X-Amz-Date. Only a read made later
// than that, finding the lease not ours, lets the lease be forgotten: an
// outage longer than this, or a create held on its way, must not leave a
// lease naming our live session that no node would ever take over.
func leftFor(ttl time.Duration) time.Duration { return max(10*ttl, 16*time.Minute) }

// leaveToken gives the lease of id written with token, if it ever lands,
// to our own recovery: a create or takeover whose outcome we never learnt.
func (s *Session) leaveToken(id, token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.left[token] = leftLease{id: id, at: s.p.clock.Now()}
}

// leftIDs returns the ids of the leases we let go, forgetting those
// given up longer ago than any request of ours could still land.
func (s *Session) leftIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for tok, a := range s.left {
		if !a.absent.IsZero() && a.absent.Sub(a.at) > leftFor(s.p.cfg.TTL) {
			delete(s.left, tok)
			continue
		}
		ids = append(ids, a.id)
	}
	return ids
}

// notHeld is told that recovery read the lease of id and found it held with
// token holder ("": no lease): every left write of it with another
// token has not landed, as of now.
func (s *Session) notHeld(id, holder string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for tok, a := range s.left {
		if a.id == id && tok != holder {
			a.absent = s.p.clock.Now()
			s.left[tok] = a
		}
	}
}

// wasLeft reports whether the lease of id held by token was let go by
// this node while naming its session; take forgets it.
func (s *Session) wasLeft(id, token string, take bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.left[token]; !ok || a.id != id {
		return false
	}
	if take {
		delete(s.left, token)
	}
	return true
}

// rung is told, by the session object obj, that fleetd cancel marked the
// leases of the claims in entries (see ringEntry): each claim of ours among
// them reads its lease, and stops its cell if the mark is there. Until it
// has, the entry stays in the session's ring, so the tool, which waits for it
// to leave, knows when it was heard.
func (s *Session) rung(obj *Claim, entries []string) {
	obj.mu.Lock()
	for _, e := range entries {
		if !slices.Contains(obj.lease.Ring, e) {
			obj.lease.Ring = append(obj.lease.Ring, e)
			go s.answer(obj, e)
		}
	}
	obj.mu.Unlock()
}

// answer reads the lease of the claim named by entry for its cancel mark,
// then takes entry out of obj's ring.
func (s *Session) answer(obj *Claim, entry string) {
	defer func() {
		obj.mu.Lock()
		obj.lease.Ring = slices.DeleteFunc(obj.lease.Ring, func(r string) bool { return r == entry })
		obj.mu.Unlock()
	}()
	id, token := parseRingEntry(entry)
	for try := 0; s.ctx.Err() == nil; try++ {
		var c *Claim
		s.mu.Lock()
		for k := range s.claims {
			if k.id == id && k.token == token {
				c = k
			}
		}
		creating := s.creating[id] > 0
		s.mu.Unlock()
		switch {
		case c == nil && !creating:
			return // not ours (any more): whoever holds it reads the mark
		case c != nil:
			ctx, cancel := context.WithTimeout(s.ctx, s.p.cfg.TTL/3)
			l, _, err := s.p.readLease(ctx, c.key, c.token)
			cancel()
			switch {
			case err == nil:
				if l.Cancel != "" {
					c.markCancelled(l.Cancel)
				}
				return
			case errors.Is(err, store.ErrPrecondition), errors.Is(err, store.ErrNotFound):
				return // taken over or ended: the mark is its successor's
			}
		}
		// A lease of id is being created, its claim not vouched for yet (the
		// create's answer has not come back): the ring is answered once it is.
		if s.p.sleep(s.ctx, min(time.Duration(100<<min(try, 6))*time.Millisecond, s.p.cfg.TTL/3)) != nil {
			return
		}
	}
}

// Close ends the session: its object is deleted when no claim relies on it
// any more; otherwise it is left to go stale, and recovery settles what is
// left as it would a dead node's.
func (s *Session) Close(ctx context.Context) {
	s.cancel()
	s.mu.Lock()
	obj, busy := s.obj, len(s.claims)+len(s.left) > 0
	s.mu.Unlock()
	if obj == nil {
		return
	}
	if busy {
		obj.drop()
		obj.log.Info("session left to go stale: claims remain for recovery", "event", "session.left")
		return
	}
	quit := make(chan struct{})
	close(quit)
	obj.end(ctx, quit)
}
