package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

// faultStore is an s3mem bucket whose answers a test can make ambiguous:
// lose lets a matching write land, then reports ErrUnknown, as the store does
// when an answer is lost.
type faultStore struct {
	*s3mem.Store
	mu   sync.Mutex
	lose func(op, key string) bool
	// losePut, if set, loses the answer of the PUTs whose body it picks.
	losePut func(key string, body []byte) bool
	// dropPut, if set, lets the PUTs it picks land and reports a bare
	// ErrUnknown, as a store whose every attempt timed out does: the
	// caller's repeat then meets its own write.
	dropPut func(key string) bool
	// stallPut, if set, holds the PUTs it picks until their context ends, as
	// S3 does when it stops answering; landed is told of every PUT that lands.
	stallPut func(key string) bool
	landed   chan<- string
	log      []string
}

func newFaultStore() *faultStore { return &faultStore{Store: s3mem.New(s3mem.Quirks{})} }

func (s *faultStore) lost(op, key string) bool {
	s.log = append(s.log, op+" "+key)
	return s.lose != nil && s.lose(op, key)
}

func (s *faultStore) List(ctx context.Context, prefix string, fn func(store.Page) error) error {
	s.mu.Lock()
	s.log = append(s.log, "LIST "+prefix)
	s.mu.Unlock()
	return s.Store.List(ctx, prefix, fn)
}

func (s *faultStore) Put(ctx context.Context, key string, body []byte, opt store.PutOptions) (string, error) {
	s.mu.Lock()
	stall := s.stallPut != nil && s.stallPut(key)
	s.mu.Unlock()
	if stall {
		<-ctx.Done()
		return "", fmt.Errorf("put %s: %w: %w", key, store.ErrUnknown, ctx.Err())
	}
	etag, err := s.Store.Put(ctx, key, body, opt)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropPut != nil && s.dropPut(key) {
		return "", fmt.Errorf("put %s: %w", key, store.ErrUnknown)
	}
	if s.lost("PUT", key) || s.losePut != nil && s.losePut(key, body) {
		// The retry of a conditional write that landed is refused by it.
		return "", fmt.Errorf("put %s: %w: %w", key, store.ErrUnknown, store.ErrPrecondition)
	}
	if s.landed != nil {
		s.landed <- key
	}
	return etag, nil
}

func (s *faultStore) Delete(ctx context.Context, key, ifMatch string) error {
	if err := s.Store.Delete(ctx, key, ifMatch); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lost("DELETE", key) {
		return fmt.Errorf("delete %s: %w", key, store.ErrUnknown)
	}
	return nil
}

// DeleteWritten goes through Delete, so its faults apply (s3mem's own
// DeleteWritten would bypass them).
func (s *faultStore) DeleteWritten(ctx context.Context, key string, v store.Version) error {
	return s.Delete(ctx, key, v.ETag)
}

func (s *faultStore) has(key string) bool {
	_, err := s.Store.Head(context.Background(), key)
	return err == nil
}

// object returns key as a GET reads it, and whether it exists.
func (s *faultStore) object(key string) (store.Object, bool) {
	o, err := s.Store.Get(context.Background(), key, 1<<20)
	return o, err == nil
}

// keys returns every key in the bucket, in order.
func (s *faultStore) keys() []string {
	var ks []string
	for _, o := range s.Snapshot("") {
		ks = append(ks, o.Key)
	}
	return ks
}

// remove deletes key unconditionally, unseen by the fault hooks.
func (s *faultStore) remove(t *testing.T, key string) {
	t.Helper()
	if err := s.Store.Delete(context.Background(), key, ""); err != nil {
		t.Fatal(err)
	}
}

func setup(t *testing.T) (*Protocol, *faultStore) {
	t.Helper()
	storage := newFaultStore()
	p := New(Config{Layout: store.NewLayout("fleet", ""), Node: "n1", TTL: MinTTL, MaxAttempts: 3,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, storage)
	return p, storage
}

// pending submits id and returns the spec as a node reads it.
func pending(t *testing.T, p *Protocol, s *faultStore, id string) Spec {
	t.Helper()
	key := p.cfg.Layout.Key(store.Pending, id)
	body := []byte(`{"spec":{"id":"` + id + `"}}`)
	etag, err := s.Put(context.Background(), key, body, store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	o, _ := s.object(key)
	return Spec{ID: id, Key: key, ETag: etag, Modified: o.LastModified, Body: body}
}

func TestClaimResolvesItsOwnAmbiguousLeaseCreate(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	once := true
	s.lose = func(op, key string) bool {
		hit := once && op == "PUT" && strings.HasPrefix(key, "fleet/leases/")
		once = once && !hit
		return hit
	}
	quit := make(chan struct{})
	c, err := p.Claim(context.Background(), quit, spec)
	if err != nil {
		t.Fatalf("claim whose lease create landed with its answer lost: %v, want it resolved as ours", err)
	}
	s.lose = nil
	if err := c.Finish(context.Background(), quit, Record{Outcome: Completed, Finished: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := s.keys(); len(got) != 1 || got[0] != "fleet/completed/a.json" {
		t.Errorf("objects after finish = %v, want only completed/a.json", got)
	}
}

func TestClaimOfAFinishedSpecWritesNothingBack(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	// Another node claimed, ran and finished it between our read and our lease.
	if err := s.Delete(context.Background(), spec.Key, ""); err != nil {
		t.Fatal(err)
	}
	_, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if !errors.Is(err, ErrGone) {
		t.Fatalf("claim = %v, want ErrGone", err)
	}
	if got := s.keys(); len(got) != 0 {
		t.Errorf("objects after a claim of a finished spec = %v, want none (pending/ must not come back)", got)
	}
}

func TestClaimWithAmbiguousPendingDeleteRuns(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	once := true
	s.lose = func(op, key string) bool {
		hit := once && op == "DELETE" && key == spec.Key
		once = once && !hit
		return hit
	}
	c, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if err != nil {
		t.Fatalf("claim whose pending/ delete landed with its answer lost: %v, want it to run", err)
	}
	s.lose = nil
	if s.has(spec.Key) {
		t.Error("pending/ still there after the claim")
	}
	c.Drop()
}

// staleClaim leaves what a holder that stopped long ago leaves: its lease
// (written ttl + 2 s ago by the server's clock) and claimed/.
func staleClaim(t *testing.T, p *Protocol, s *faultStore, spec Spec, attempts int) {
	t.Helper()
	l := leaseBody{Node: "dead", Token: "old", Epoch: 1, TTLMillis: MinTTL.Milliseconds(), Attempts: attempts,
		State: stateRunning, PendingETag: spec.ETag}
	body, _ := encodeLease(&l, time.Now())
	key := p.cfg.Layout.Key(store.Leases, spec.ID)
	s.PutAt(key, body, nil, time.Now().Add(-MinTTL-2*time.Second))
	s.PutAt(p.cfg.Layout.Key(store.Claimed, spec.ID), spec.Body, nil, time.Now())
}

func TestRecoverySettles(t *testing.T) {
	for _, tt := range []struct {
		name      string
		consumed  bool // the holder deleted pending/
		attempts  int
		wantKeys  []string
		wantTries string
	}{
		{"never consumed: no run started, only the claim goes", false, 3, []string{"fleet/pending/a.json"}, ""},
		{"consumed: back to pending/ with its attempts", true, 2, []string{"fleet/pending/a.json"}, "2"},
		{"consumed, attempts used up: abandoned", true, 3, []string{"fleet/failed/a.json"}, "3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, s := setup(t)
			spec := pending(t, p, s, "a")
			staleClaim(t, p, s, spec, tt.attempts)
			if tt.consumed {
				s.remove(t, spec.Key)
			}
			if err := p.recoverScan(context.Background(), make(chan struct{}), true); err != nil {
				t.Fatal(err)
			}
			got := s.keys()
			if len(got) != 1 || got[0] != tt.wantKeys[0] {
				t.Fatalf("objects after recovery = %v, want %v", got, tt.wantKeys)
			}
			if o, _ := s.object(got[0]); o.Metadata[metaAttempts] != tt.wantTries {
				t.Errorf("%s attempts = %q, want %q", got[0], o.Metadata[metaAttempts], tt.wantTries)
			}
		})
	}
}

func TestRecoveryOnlyCleansUpAFinishedClaim(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	staleClaim(t, p, s, spec, 1)
	s.remove(t, spec.Key)
	done := p.cfg.Layout.Key(store.Completed, "a")
	s.PutAt(done, spec.Body, map[string]string{metaToken: "old"}, time.Now())
	if err := p.recoverScan(context.Background(), make(chan struct{}), true); err != nil {
		t.Fatal(err)
	}
	if got := s.keys(); len(got) != 1 || got[0] != done {
		t.Errorf("objects after recovery = %v, want only %s", got, done)
	}
}

func TestPriorAttemptsIsClamped(t *testing.T) {
	for _, tt := range []struct {
		meta string
		want int
	}{{"", 0}, {"2", 2}, {"-5", 0}, {"999999", 2}, {"x", 0}} {
		if got := PriorAttempts(map[string]string{metaAttempts: tt.meta}, 3); got != tt.want {
			t.Errorf("PriorAttempts(%q) = %d, want %d", tt.meta, got, tt.want)
		}
	}
}

func TestValidityLeavesRoomForTimestampResolution(t *testing.T) {
	for _, ttl := range []time.Duration{MinTTL, time.Minute, time.Hour} {
		// The holder stops acting at least a second before any recoverer may
		// judge the lease stale, and renews at least twice within its window.
		if gap := staleAfter(ttl) - validFor(ttl); gap < 2*time.Second {
			t.Errorf("ttl %v: holder window ends only %v before staleness", ttl, gap)
		}
		if validFor(ttl) < 2*ttl/3-ttl/10 {
			t.Errorf("ttl %v: window %v leaves less than two renewals", ttl, validFor(ttl))
		}
	}
}

func TestOneNodeOfTheFleetScans(t *testing.T) {
	a, s := setup(t)
	b := New(a.cfg, s)
	b.cfg.Node = "n2"
	ctx, quit := context.Background(), make(chan struct{})
	lists := func() int {
		n := 0
		for _, op := range s.log {
			if strings.HasPrefix(op, "LIST") {
				n++
			}
		}
		return n
	}
	if ran, err := a.RecoverIfDue(ctx, quit); !ran || err != nil {
		t.Fatalf("first node: ran %v, %v; want a scan", ran, err)
	}
	first := lists() // claimed/, leases/ and sessions/: the first scan lists all three
	if first != 3 {
		t.Errorf("first scan made %d LISTs, want claimed/, leases/ and sessions/", first)
	}
	if ran, err := b.RecoverIfDue(ctx, quit); ran || err != nil {
		t.Fatalf("second node right after: ran %v, %v; want no scan", ran, err)
	}
	if got := lists(); got != first {
		t.Errorf("%d LISTs after the second node's turn, want still %d", got, first)
	}
}

// stepClock is a clock a test moves by hand; waits run on the real one.
// Keepers read it from their own goroutines.
type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// set moves the clock to t.
func (c *stepClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}
func (c *stepClock) AfterFunc(d time.Duration, f func()) interface{ Stop() bool } {
	return time.AfterFunc(d, f)
}

func TestClaimsListedOncePerPeriod(t *testing.T) {
	p, s := setup(t)
	period := 3 * p.cfg.TTL
	start := time.Unix(0, 0).Add(1000*period + p.cfg.TTL/2) // half a ttl into a period
	clock := &stepClock{now: start}
	p.clock = clock
	ctx, quit := context.Background(), make(chan struct{})
	claimLists := func() int {
		n := 0
		for _, op := range s.log {
			if op == "LIST "+p.cfg.Layout.Dir(store.Claimed) {
				n++
			}
		}
		return n
	}
	// A lone node scans on every offer, about once a ttl: ten scans over
	// three periods and a half.
	for i := range 10 {
		clock.set(start.Add(time.Duration(i) * p.cfg.TTL))
		if ran, err := p.RecoverIfDue(ctx, quit); !ran || err != nil {
			t.Fatalf("scan %d: ran %v, %v", i, ran, err)
		}
	}
	// The first scan (no marker yet) and the first in each of the next three periods.
	if got := claimLists(); got != 4 {
		t.Errorf("claimed/ listed %d times in 10 scans, want 4: %v", got, s.log)
	}
}

func TestClaimsDue(t *testing.T) {
	const ttl = 10 * time.Second
	base := time.Unix(0, 0).Add(1000 * 3 * ttl)
	for _, c := range []struct {
		prev, now time.Time
		want      bool
	}{
		{time.Time{}, base, true},                                // no scan known
		{base.Add(time.Second), base.Add(2 * ttl), false},        // same period
		{base.Add(-time.Second), base.Add(time.Second), true},    // a boundary crossed
		{base.Add(2 * ttl), base.Add(3*ttl + time.Second), true}, // the next period
	} {
		if got := claimsDue(c.prev, c.now, ttl); got != c.want {
			t.Errorf("claimsDue(%v, %v) = %v, want %v", c.prev.Sub(base), c.now.Sub(base), got, c.want)
		}
	}
}

func TestCancelPendingFilesIt(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	res, err := p.Cancel(context.Background(), "a", "alice")
	if err != nil || !res.Filed {
		t.Fatalf("Cancel = %+v, %v; want it filed", res, err)
	}
	got := s.keys()
	if len(got) != 1 || got[0] != "fleet/failed/a.json" {
		t.Fatalf("objects = %v, want only failed/a.json", got)
	}
	o, _ := s.object("fleet/failed/a.json")
	if o.Metadata[metaOutcome] != "cancelled" || o.Metadata[metaReason] != "cancelled by alice" || string(o.Body) != string(spec.Body) {
		t.Errorf("failed/a.json = %s %v", o.Body, o.Metadata)
	}
}

func TestCancelRunningReachesTheHolder(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	c, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	tool := New(p.cfg, s)
	res, err := tool.Cancel(context.Background(), "a", "bob")
	if err != nil || res.Filed || res.Node != "n1" {
		t.Fatalf("Cancel = %+v, %v; want the holder n1 asked", res, err)
	}
	select {
	case <-c.Cancelled(): // seen on the holder's next renewal, within ttl/3
	case <-time.After(3 * MinTTL):
		t.Fatal("the holder never saw the cancel mark")
	}
	if c.CancelledBy() != "bob" || c.Lost() {
		t.Errorf("CancelledBy = %q, lost %v; want bob, and the lease still held", c.CancelledBy(), c.Lost())
	}
}

// TestCancelMarkWhoseAnswerWasLost: the cancel mark's compare-and-swap lands
// but its answer is lost (a retry would get 412 from it): the tool reads the
// lease back and finds its own mark, rather than retrying or giving up.
func TestCancelMarkWhoseAnswerWasLost(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	c, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()
	tool := New(p.cfg, s)
	once := true
	s.mu.Lock()
	s.losePut = func(key string, body []byte) bool { // the mark, not a renewal
		hit := once && key == "fleet/leases/a.json" && strings.Contains(string(body), `"cancel":"carol"`)
		once = once && !hit
		return hit
	}
	s.mu.Unlock()
	res, err := tool.Cancel(context.Background(), "a", "carol")
	if err != nil || res.Node != "n1" {
		t.Fatalf("Cancel = %+v, %v; want the holder n1 asked", res, err)
	}
	select {
	case <-c.Cancelled():
	case <-time.After(3 * MinTTL):
		t.Fatal("the holder never saw the cancel mark")
	}
	if c.CancelledBy() != "carol" || once {
		t.Errorf("CancelledBy = %q, mark's answer lost %v; want carol, and the loss to have happened", c.CancelledBy(), !once)
	}
}

// TestHungRenewalIsGivenUpInTime: a renewal whose request never answers
// (the store's retries and SlowDown pause can hold one for tens of seconds)
// is given up while the lease is still valid, and the next one lands before
// it lapses: the cell is not stopped. Found by the soak: after an outage, one
// renewal outlasted the validity and a healthy cell ran twice.
func TestHungRenewalIsGivenUpInTime(t *testing.T) {
	storage := newFaultStore()
	// A ttl of 6 s: the validity left at a renewal (2.8 s) holds the hung
	// write's half, its read-back and the retry with room for a loaded machine.
	p := New(Config{Layout: store.NewLayout("fleet", ""), Node: "n1", TTL: 6 * time.Second, MaxAttempts: 3,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, storage)
	spec := pending(t, p, storage, "a")
	c, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Drop()

	landed := make(chan string, 16)
	hung := false
	storage.mu.Lock()
	storage.stallPut = func(key string) bool { // the first renewal after the claim
		hit := !hung && key == "fleet/leases/a.json"
		hung = hung || hit
		return hit
	}
	storage.landed = landed
	storage.mu.Unlock()
	for {
		select {
		case key := <-landed:
			storage.mu.Lock()
			after := hung
			storage.mu.Unlock()
			if key == "fleet/leases/a.json" && after {
				return // a renewal after the hung one landed, in time
			}
		case <-lapsed(c):
			t.Fatal("the lease lapsed while the keeper waited on a renewal that never answered")
		}
	}
}

// lapsed returns a channel closed once c is not valid.
func lapsed(c *Claim) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		for {
			valid, _, changed := c.Hold()
			if !valid {
				return
			}
			<-changed
		}
	}()
	return ch
}
