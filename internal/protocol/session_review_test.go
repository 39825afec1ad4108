package protocol

// Found by an adversarial review of sessions (cb5018f): each
// TestReviewSession… test is a sequence of S3 answers, outages and agents
// that breaks a rule of docs/PROTOCOL.md, "Sessions".

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

var errOutage = fmt.Errorf("%w: the store does not answer (outage)", store.ErrUnknown)

func reviewCfg(node string, clock Clock) Config {
	return Config{Layout: store.NewLayout("fleet", ""), Node: node, TTL: MinTTL, MaxAttempts: 3,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Clock: clock}
}

// sessionAge is the age of session tok's last write on the server's clock.
func sessionAge(t *testing.T, p *Protocol, s *faultStore, tok string) time.Duration {
	t.Helper()
	o, err := s.Store.Head(context.Background(), p.cfg.Layout.Key(store.Sessions, tok))
	if err != nil {
		t.Fatalf("session %s: %v", tok, err)
	}
	return o.ServerTime.Sub(o.LastModified)
}

// TestReviewSessionMoveToAnEndedSessionIsNotValid: a claim is valid only
// while the session its lease names is. A move of a lease to the new
// session S′ whose write is in flight when S′ in turn is found ended (the
// holder cut off again: a recoverer ended S′ but had not yet taken the lease
// over) lands naming S′; by then the restart has made S″, and moveOnce
// extends the claim to Session.until — S″'s validity — though its lease names
// S′, which is gone. Until the move to S″ lands, the claim is valid (its cell
// thawed) while any node may take the lease over: here one does, and the
// holder still says the claim is valid.
func TestReviewSessionMoveToAnEndedSessionIsNotValid(t *testing.T) {
	ctx, quit := context.Background(), make(chan struct{})
	storage := newFaultStore()
	h1 := &hookStore{faultStore: storage}
	p1, p2 := New(reviewCfg("n1", nil), h1), New(reviewCfg("n2", nil), storage)
	s1, err := p1.StartSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close(ctx)
	s2, err := p2.StartSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close(ctx)
	c, err := p1.Claim(ctx, quit, pending(t, p1, storage, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	for !p2.patient() { // n2 has reached the store for a ttl: it may judge
		time.Sleep(100 * time.Millisecond)
	}
	leaseKey := p1.cfg.Layout.Key(store.Leases, "a")
	obj := func() *Claim {
		s1.mu.Lock()
		defer s1.mu.Unlock()
		return s1.obj
	}
	// endAndWait ends session o as a recoverer would (a delete), makes the
	// holder learn it, and waits for the next session.
	endAndWait := func(o *Claim) string {
		storage.remove(t, o.key)
		s1.lost(o)
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if tok, _, ok := s1.current(); ok && tok != o.token {
				return tok
			}
			if time.Now().After(deadline) {
				t.Fatal("no new session")
			}
		}
	}

	// n1 is cut off: its session's window closes (the claim lapses, its
	// cell frozen) before a recoverer ends the session.
	h1.setBefore(func(op, key string) error { return errOutage })
	<-lapsed(c)

	var (
		mu           sync.Mutex // the hook runs on the holder's goroutines
		moves        int
		validAtTake  bool
		takenOver    bool
		sessionNamed string
	)
	h1.setBefore(func(op, key string) error {
		if op != "PUT" || key != leaseKey {
			return nil
		}
		mu.Lock()
		moves++
		n := moves
		mu.Unlock()
		switch n {
		case 1: // the move to S′, on its way: S′ is ended meanwhile, S″ made
			endAndWait(obj())
		case 2: // the move to S″: before it, n2 takes the lease over
			h1.setBefore(nil)
			p2.takeOverLease(ctx, quit, "a", &judge{p: p2})
			// n2 took the lease over and settled the spec: back in pending/.
			taken := storage.has(p1.cfg.Layout.Key(store.Pending, "a"))
			valid, lost, _ := c.Hold()
			mu.Lock()
			takenOver, validAtTake = taken, valid && !lost
			mu.Unlock()
		}
		return nil
	})
	first := obj()
	sessionNamed = endAndWait(first) // S ended: the holder makes S′ and moves
	movesNow := func() int {
		mu.Lock()
		defer mu.Unlock()
		return moves
	}
	for deadline := time.Now().Add(3 * MinTTL); (movesNow() < 2 || !c.Lost()) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if moves < 2 {
		t.Fatalf("%d moves (S′ %s)", moves, sessionNamed)
	}
	if !takenOver {
		t.Fatal("n2 did not take the lease over: the sequence did not happen")
	}
	if validAtTake {
		t.Error("the claim was valid (its cell thawed) while its lease named an ended session and n2 took the lease over: two runs may make progress")
	}
}

// TestReviewSessionAbandonedCreateForgotten: a lease create whose answer is
// lost, with the store unreachable for its read-back, is given to this
// node's own recovery (Session.leaveToken): nobody else would judge a lease
// naming our live session. But leftIDs forgets it 10 ttl after it was
// abandoned, whether or not recovery ever managed to read the lease. An
// outage of over 10 ttl (10 minutes at the default ttl) that starts as the
// create lands leaves, once the store answers again, a lease that names a
// live session and that no node will ever take over: the spec stays in
// pending/, refused to every claimer as held, for as long as the agent runs.
// (A create held on its way past 10 ttl — lease PUTs are not presigned — does
// the same without an outage.)
func TestReviewSessionAbandonedCreateForgotten(t *testing.T) {
	ctx, quit := context.Background(), make(chan struct{})
	storage := newFaultStore()
	h1 := &hookStore{faultStore: storage}
	clk := &stepClock{now: time.Now()}
	p1 := New(reviewCfg("n1", clk), h1)
	p2 := New(reviewCfg("n2", nil), storage) // any other node
	s1, err := p1.StartSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close(ctx)
	spec := pending(t, p1, storage, "a")
	leaseKey := p1.cfg.Layout.Key(store.Leases, "a")

	// The create lands; its answer is lost, and the outage begins.
	storage.mu.Lock()
	storage.losePut = func(key string, body []byte) bool {
		if key == leaseKey {
			h1.setBefore(func(op, key string) error { return errOutage })
			return true
		}
		return false
	}
	storage.mu.Unlock()
	if _, err := p1.Claim(ctx, quit, spec); err == nil {
		t.Fatal("claim succeeded; want its create unresolved")
	}
	storage.mu.Lock()
	storage.losePut = nil
	storage.mu.Unlock()
	if !storage.has(leaseKey) {
		t.Fatal("the lease create did not land")
	}
	// During the outage each recovery offer tries the abandoned lease, and fails.
	for range 3 {
		_, _ = p1.RecoverIfDue(ctx, quit)
	}

	// The outage lasts over 10 ttl, then ends; the session, which nobody
	// ended (a lone agent, or patient recoverers), is renewed again.
	clk.set(clk.Now().Add(10*MinTTL + time.Second))
	h1.setBefore(nil)
	for deadline := time.Now().Add(3 * MinTTL); !s1.Valid(); {
		if time.Now().After(deadline) {
			t.Fatal("the session was not renewed after the outage")
		}
		time.Sleep(50 * time.Millisecond)
	}

	for range 3 {
		_, _ = p1.RecoverIfDue(ctx, quit)
		if err := p2.recoverScan(ctx, quit, true); err != nil {
			t.Fatal(err)
		}
	}
	if storage.has(leaseKey) {
		_, err := p2.Claim(ctx, quit, spec)
		t.Errorf("a lease naming n1's live session outlived n1's memory of it: no node takes it over, "+
			"and pending/a cannot be claimed (%v)", err)
		if !errors.Is(err, ErrHeld) {
			t.Logf("claim by n2: %v", err)
		}
	}
}

// TestPreSessionAgentLeavesSessionLeasesAlone: an agent of the version
// before sessions (ab4fc30, in a rolling upgrade) reads a lease without its
// session field and judges it by its own age (recover.go there: "age <=
// staleAfter(ttl): return", else compare-and-swap). A lease naming a session
// is never rewritten, so it would take over every running spec of a session
// agent ttl + 1 s after its claim (review finding 5). Such a lease says "never
// stale" in the field that version reads (ttl_ms), its real ttl in
// session_ttl_ms. The older agent's decision is reproduced here as that
// version made it, for two ttls.
func TestPreSessionAgentLeavesSessionLeasesAlone(t *testing.T) {
	t.Parallel()
	ctx, quit := context.Background(), make(chan struct{})
	storage := newFaultStore()
	p1 := New(reviewCfg("n1", nil), storage)
	s1, err := p1.StartSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close(ctx)
	c, err := p1.Claim(ctx, quit, pending(t, p1, storage, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	key := p1.cfg.Layout.Key(store.Leases, "a")
	for deadline := time.Now().Add(2*MinTTL + 1500*time.Millisecond); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		o, err := storage.Store.Get(ctx, key, MaxLeaseBytes)
		if err != nil {
			t.Fatal(err)
		}
		var old struct { // the lease as that version decodes it
			TTLMillis int64 `json:"ttl_ms"`
		}
		if err := json.Unmarshal(o.Body, &old); err != nil {
			t.Fatal(err)
		}
		ttl := max(time.Duration(old.TTLMillis)*time.Millisecond, MinTTL)
		if age := o.ServerTime.Sub(o.LastModified); age > staleAfter(ttl) {
			t.Fatalf("an agent of the version before sessions would take over a live lease %v old (its ttl_ms %d)", age, old.TTLMillis)
		}
	}
	if valid, lost, _ := c.Hold(); !valid || lost {
		t.Errorf("claim valid %v lost %v; want it held throughout", valid, lost)
	}
	if l := leaseOf(t, storage, "a"); l.ttl() != MinTTL {
		t.Errorf("the lease's own ttl reads %v, want the holder's %v", l.ttl(), MinTTL)
	}
}

// TestReviewSessionLegacyRecovererIsNotPatient: "After a fleet-wide outage
// every holder then gets a ttl to renew before anyone judges it." A fleet
// with an agent that has no session (p.session == nil: Protocol.patient
// answers true) breaks it: the outage ends, and that agent's first recovery
// offer, before the holder's next renewal retry (up to min(ttl/10, 1 s)
// later), ends the holder's session and takes over its running spec. A
// session agent in the same position leaves it alone. No node died: the
// holder's cell is killed and the spec runs again elsewhere, its attempt
// counted. (The simulator's "legacy" agents are such agents.)
func TestReviewSessionLegacyRecovererIsNotPatient(t *testing.T) {
	ctx, quit := context.Background(), make(chan struct{})
	storage := newFaultStore()
	h1 := &hookStore{faultStore: storage} // the holder
	h3 := &hookStore{faultStore: storage} // a recoverer with a session
	h2 := &hookStore{faultStore: storage} // a recoverer without one (legacy)
	p1, p2, p3 := New(reviewCfg("n1", nil), h1), New(reviewCfg("n2", nil), h2), New(reviewCfg("n3", nil), h3)
	s1, err := p1.StartSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close(ctx)
	s3, err := p3.StartSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close(ctx)
	c, err := p1.Claim(ctx, quit, pending(t, p1, storage, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	tok, _, _ := s1.current()

	// A fleet-wide outage, longer than ttl + 1 s.
	outage := func(op, key string) error { return errOutage }
	for _, h := range []*hookStore{h1, h2, h3} {
		h.setBefore(outage)
	}
	for deadline := time.Now().Add(15 * time.Second); sessionAge(t, p1, storage, tok) <= staleAfter(MinTTL); {
		if time.Now().After(deadline) {
			t.Fatal("the holder's session never went stale during the outage")
		}
		// The recoverers' offers (about once a ttl) fail meanwhile.
		_, _ = p2.RecoverIfDue(ctx, quit)
		_, _ = p3.RecoverIfDue(ctx, quit)
		time.Sleep(200 * time.Millisecond)
	}
	if valid, _, _ := c.Hold(); valid {
		t.Fatal("the claim is still valid after the outage outlasted its window")
	}

	// The outage ends. The holder's renewal retry is due within a second;
	// the recoverers' offers come first.
	h2.setBefore(nil)
	h3.setBefore(nil)
	if ran, err := p3.RecoverIfDue(ctx, quit); ran || err != nil {
		t.Fatalf("session agent right after the outage: ran %v, %v; want no scan (patience)", ran, err)
	}
	if _, err := p2.RecoverIfDue(ctx, quit); err != nil {
		t.Fatal(err)
	}
	h1.setBefore(nil)

	o, ok := storage.object(p1.cfg.Layout.Key(store.Leases, "a"))
	if !ok {
		o.Body = []byte("(gone)")
	}
	lease, _ := ParseLease(o.Body)
	if !ok || lease.Node != "n1" {
		t.Errorf("right after a fleet-wide outage a legacy agent took over n1's running spec (lease now %s): "+
			"the holder got no ttl to renew first", o.Body)
	}
	for deadline := time.Now().Add(MinTTL); !c.Lost() && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	if c.Lost() {
		t.Errorf("n1 never died, and its claim of a is lost: its frozen cell is killed and a runs again")
	}
}

// answerStore delays the answer of one write until after, which may act
// (another tool), has run: the write has landed meanwhile.
type answerStore struct {
	*faultStore
	mu    sync.Mutex
	after func(key string)
}

func (s *answerStore) Put(ctx context.Context, key string, body []byte, opt store.PutOptions) (string, error) {
	etag, err := s.faultStore.Put(ctx, key, body, opt)
	s.mu.Lock()
	f := s.after
	s.mu.Unlock()
	if err == nil && f != nil {
		f(key)
	}
	return etag, err
}

// TestReviewSessionRingBeforeTheClaimIsVouchedFor: fleetd cancel may mark a
// lease that says "claiming" because its holder is rung: the holder "hears
// before its next renewal lands". But the holder answers a ring from the
// claims its session vouches for, and a claim is vouched for only once the
// answer to its lease create has come back. A create that has landed and
// whose answer is slow (not lost: a lost one is read back, and the mark's
// nonce is not ours) lets the tool mark the lease and ring the session; the
// holder's renewal finds no claim of that id, takes it out of the ring, and
// the tool reports that the holder heard. The claim then goes on, its mark
// unread, and runs the cell to the end.
func TestReviewSessionRingBeforeTheClaimIsVouchedFor(t *testing.T) {
	ctx, quit := context.Background(), make(chan struct{})
	fs := newFaultStore()
	storage := &answerStore{faultStore: fs}
	p1 := New(reviewCfg("n1", nil), storage)
	s1, err := p1.StartSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close(ctx)
	spec := pending(t, p1, fs, "a")
	leaseKey := p1.cfg.Layout.Key(store.Leases, "a")
	var (
		res    CancelResult
		cerr   error
		called bool
	)
	storage.after = func(key string) {
		if key != leaseKey || called {
			return
		}
		called = true
		res, cerr = New(reviewCfg("tool", nil), fs).Cancel(ctx, "a", "bob")
	}
	c, err := p1.Claim(ctx, quit, spec)
	if !called {
		t.Fatal("the lease create was not delayed")
	}
	// While the create's answer is held, the holder cannot have heard: the
	// tool says so ("asked, not yet heard"), or it said "heard" and the
	// claim must have the mark.
	if res.Node != "n1" || cerr != nil && !errors.Is(cerr, ErrCancelUnheard) {
		t.Fatalf("Cancel = %+v, %v; want the holder n1 asked", res, cerr)
	}
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	defer c.Drop()
	select {
	case <-c.Cancelled():
	case <-time.After(2 * MinTTL):
		if cerr == nil {
			t.Error("fleetd cancel said n1 heard the cancel of a; n1's claim of a never read the mark and runs its cell")
		} else {
			t.Error("n1's claim of a never read the mark")
		}
	}
}
