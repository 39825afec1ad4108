package protocol

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// runningClaim claims a pending spec with retry state r and returns it.
func runningClaim(t *testing.T, p *Protocol, s *faultStore, id string, r RetryState) *Claim {
	t.Helper()
	spec := pending(t, p, s, id)
	spec.Retry = r
	c, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRetryWritesTheDelayedKeyAndEndsTheClaim(t *testing.T) {
	p, s := setup(t)
	c := runningClaim(t, p, s, "a", RetryState{Limit: 2, Done: 1, Reasons: []string{"supervisor exit 1"}})
	nb := time.Date(2030, 1, 2, 3, 4, 5, 600e6, time.UTC)
	if err := c.Retry(context.Background(), make(chan struct{}), "supervisor exit 2", nb); err != nil {
		t.Fatal(err)
	}
	key := "fleet/pending/.delayed/20300102T030405.600Z/a.json"
	if got := sortedKeys(s); !slices.Equal(got, []string{key}) {
		t.Fatalf("objects = %v, want only %s (claimed/ and the lease gone)", got, key)
	}
	o, _ := s.object(key)
	got := ParseRetry(o.Metadata)
	if got.Limit != 2 || got.Done != 2 || !slices.Equal(got.Reasons, []string{"supervisor exit 1", "supervisor exit 2"}) {
		t.Errorf("retry state %+v, want limit 2, 2 done, both reasons", got)
	}
	if o.Metadata[metaAttempts] != "0" {
		t.Errorf("attempts %q, want 0: a run that failed on its own is no lost run", o.Metadata[metaAttempts])
	}
}

// TestRecoveryFinishesAnInterruptedRetry: a holder stopped after its lease
// said it retries ends where it would have: the delayed key written once,
// claimed/ and the lease gone — never back in pending/ at once, never lost.
func TestRecoveryFinishesAnInterruptedRetry(t *testing.T) {
	const key = "fleet/pending/.delayed/20300101T000000.000Z/a.json"
	meta := map[string]string{metaRetried: "1", metaReasons: "supervisor exit 1", metaAttempts: "0"}
	for _, tt := range []struct {
		name            string
		claimed, landed bool // claimed/ still there; the delayed key landed
	}{
		{"stopped before the delayed key", true, false},
		{"stopped after it, before claimed/ went", true, true},
		{"stopped before the lease went", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, s := setup(t)
			spec := pending(t, p, s, "a")
			s.remove(t, spec.Key) // consumed by the claim
			if tt.claimed {
				s.PutAt(p.cfg.Layout.Key(store.Claimed, "a"), spec.Body, map[string]string{metaToken: "t1", metaAttempts: "1"}, time.Now())
			}
			if tt.landed {
				s.PutAt(key, spec.Body, meta, time.Now())
			}
			staleLease(p, s, "a", leaseBody{Node: "dead", Token: "t1", Epoch: 1, Attempts: 1, Intent: intentRun, State: stateReleasing,
				Released: true, PendingETag: spec.ETag, RetryKey: key, RetryMeta: meta})
			recoverNow(t, p)
			if got := sortedKeys(s); !slices.Equal(got, []string{key}) {
				t.Fatalf("objects after recovery = %v, want only %s", got, key)
			}
			if o, _ := s.object(key); o.Metadata[metaRetried] != "1" || o.Metadata[metaReasons] != "supervisor exit 1" {
				t.Errorf("delayed metadata %v, want the retry state the holder chose", o.Metadata)
			}
		})
	}
}

// delayed writes a delayed copy of id due long ago.
func delayed(t *testing.T, p *Protocol, s *faultStore, id string) (string, []byte) {
	t.Helper()
	key := p.cfg.Layout.DelayedKey(id, time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	body := []byte(`{"spec":{"id":"` + id + `"}}`)
	if _, err := s.Put(context.Background(), key, body, store.PutOptions{Metadata: map[string]string{metaRetried: "1"}}); err != nil {
		t.Fatal(err)
	}
	return key, body
}

func TestPromoteMovesADueSpecToPending(t *testing.T) {
	p, s := setup(t)
	key, body := delayed(t, p, s, "a")
	if _, err := p.Promote(context.Background(), make(chan struct{}), p.cfg.Layout.DelayedKey("a", time.Now().Add(time.Hour)), time.Now()); !errors.Is(err, ErrNotDue) {
		t.Errorf("promote of a spec due in an hour: %v, want ErrNotDue", err)
	}
	if _, err := p.Promote(context.Background(), make(chan struct{}), key, time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := sortedKeys(s); !slices.Equal(got, []string{"fleet/pending/a.json"}) {
		t.Fatalf("objects = %v, want only pending/a.json", got)
	}
	if o, _ := s.object("fleet/pending/a.json"); string(o.Body) != string(body) || o.Metadata[metaRetried] != "1" {
		t.Errorf("pending/ holds %q %v, want the delayed bytes and their retry state", o.Body, o.Metadata)
	}
}

// TestPromoteWhoseAnswerWasLost: the PUT of pending/ landed, its answer lost,
// and the repeat refused by our own create: the promotion is done, not taken
// for a resubmission (which left the delayed copy to run a second time).
func TestPromoteWhoseAnswerWasLost(t *testing.T) {
	var (
		p   *Protocol
		s   *faultStore
		key string
	)
	for _, lose := range []func(){
		// The repeat inside the store meets the write: 412, known unknown.
		func() { s.lose = func(op, k string) bool { return op == "PUT" && k == "fleet/pending/a.json" } },
		// The store gave up unsure; the protocol's repeat meets the write
		// with a plain 412.
		func() {
			dropped := false
			s.dropPut = func(k string) bool {
				if k == "fleet/pending/a.json" && !dropped {
					dropped = true
					return true
				}
				return false
			}
		},
	} {
		p, s = setup(t)
		key, _ = delayed(t, p, s, "a")
		lose()
		if _, err := p.Promote(context.Background(), make(chan struct{}), key, time.Now()); err != nil {
			t.Fatalf("promote: %v", err)
		}
		if got := sortedKeys(s); !slices.Equal(got, []string{"fleet/pending/a.json"}) {
			t.Errorf("objects = %v, want only pending/a.json", got)
		}
	}
}

func TestPromoteLeavesAResubmissionAlone(t *testing.T) {
	p, s := setup(t)
	key, _ := delayed(t, p, s, "a")
	spec := pending(t, p, s, "a")
	if _, err := p.Promote(context.Background(), make(chan struct{}), key, time.Now()); !errors.Is(err, ErrPending) {
		t.Errorf("promote over a pending spec: %v, want ErrPending", err)
	}
	if got := sortedKeys(s); !slices.Equal(got, []string{key, spec.Key}) {
		t.Errorf("objects = %v, want the delayed copy waiting and pending/ as it was", got)
	}
}

// TestRecoveryFinishesAnInterruptedPromotion: whoever takes a stopped
// promotion over ends with exactly one copy of the spec: pending/ if the
// copy landed (the delayed one deleted), the delayed one otherwise.
func TestRecoveryFinishesAnInterruptedPromotion(t *testing.T) {
	for _, tt := range []struct {
		name   string
		landed bool
		want   []string
	}{
		{"copy landed", true, []string{"fleet/pending/a.json"}},
		{"nothing copied: undone", false, []string{"DELAYED"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, s := setup(t)
			key, body := delayed(t, p, s, "a")
			if tt.landed {
				o, _ := s.object(key)
				s.PutAt("fleet/pending/a.json", body, map[string]string{metaToken: "t1",
					metaDelayedModified: o.LastModified.UTC().Format(time.RFC3339Nano)}, time.Now())
			}
			staleLease(p, s, "a", leaseBody{Node: "dead", Token: "t1", Epoch: 1, Intent: intentPromote, State: statePromoting,
				DelayedKey: key})
			recoverNow(t, p)
			want := slices.Clone(tt.want)
			for i, k := range want {
				if k == "DELAYED" {
					want[i] = key
				}
			}
			if got := sortedKeys(s); !slices.Equal(got, want) {
				t.Fatalf("objects after recovery = %v, want %v", got, want)
			}
		})
	}
}

// TestCancelFilesEveryCopy: a cancel files the spec's pending copy and each
// of its delayed copies (a retry, submit --in), and no other spec's.
func TestCancelFilesEveryCopy(t *testing.T) {
	p, s := setup(t)
	delayed(t, p, s, "a")
	s.PutAt(p.cfg.Layout.DelayedKey("a", time.Now().Add(time.Hour)), []byte(`{}`), nil, time.Now())
	pending(t, p, s, "a")
	s.PutAt(p.cfg.Layout.DelayedKey("b", time.Now()), []byte(`{}`), nil, time.Now())
	res, err := p.Cancel(context.Background(), "a", "alice")
	if err != nil || !res.Filed {
		t.Fatalf("cancel = %+v, %v; want filed", res, err)
	}
	if got := sortedKeys(s); len(got) != 2 || got[0] != "fleet/failed/a.json" || !strings.HasSuffix(got[1], "/b.json") {
		t.Errorf("objects = %v, want a filed and b's delayed copy untouched", got)
	}
	if o, _ := s.object("fleet/failed/a.json"); o.Metadata[metaOutcome] != "cancelled" {
		t.Errorf("failed/a.json metadata %v, want outcome cancelled", o.Metadata)
	}
}

// TestRecoveryFinishesAnInterruptedCancel: a cancel that stopped holding the
// lease is finished by whoever takes it over: every copy filed.
func TestRecoveryFinishesAnInterruptedCancel(t *testing.T) {
	p, s := setup(t)
	delayed(t, p, s, "a")
	pending(t, p, s, "a")
	staleLease(p, s, "a", leaseBody{Node: "tool", Token: "t1", Epoch: 1, Intent: intentCancel, State: stateCancelling, Cancel: "alice"})
	recoverNow(t, p)
	if got := sortedKeys(s); !slices.Equal(got, []string{"fleet/failed/a.json"}) {
		t.Fatalf("objects after recovery = %v, want only failed/a.json", got)
	}
}

// TestCancelledRunTakesItsDelayedCopies: the holder of a run it was asked
// to cancel files the spec's delayed copies too before it lets the lease go
// (nobody could promote them meanwhile), so none runs after the cancel.
func TestCancelledRunTakesItsDelayedCopies(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	c, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := delayed(t, p, s, "a")
	res, err := New(p.cfg, s).Cancel(context.Background(), "a", "bob")
	if err != nil || res.Node != "n1" {
		t.Fatalf("cancel = %+v, %v; want the holder n1 asked", res, err)
	}
	select {
	case <-c.Cancelled():
	case <-time.After(3 * MinTTL):
		t.Fatal("the holder never saw the cancel mark")
	}
	if err := c.Finish(context.Background(), make(chan struct{}), Record{Outcome: Cancelled, Reason: "cancelled by bob", Finished: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.object(key); ok {
		t.Errorf("delayed copy %s still there after the cancelled run ended", key)
	}
	if got := sortedKeys(s); !slices.Equal(got, []string{"fleet/failed/a.json"}) {
		t.Errorf("objects = %v, want only failed/a.json", got)
	}
}

// TestSecondCancelWaitsForTheFirst: a cancel finding another cancel's lease
// does not say the spec is being stopped (nobody runs it to stop): it waits
// for that lease to go, and says "try again" if it does not.
func TestSecondCancelWaitsForTheFirst(t *testing.T) {
	p, s := setup(t)
	pending(t, p, s, "a")
	l := leaseBody{Node: "tool", Token: "t1", Epoch: 1, Intent: intentCancel, State: stateCancelling, Cancel: "alice",
		TTLMillis: time.Hour.Milliseconds()}
	body, _ := encodeLease(&l, time.Now())
	s.PutAt("fleet/leases/a.json", body, nil, time.Now())
	res, err := New(p.cfg, s).Cancel(context.Background(), "a", "bob")
	if err == nil || res.Node != "" || res.Filed {
		t.Fatalf("cancel = %+v, %v; want an error saying to try again, not a holder asked", res, err)
	}
}

// TestRecoveryHonoursAMarkOnAClaimThatNeverRan: a marked claim whose
// pending/ version was replaced before it consumed it (no claimed/, no
// result) is not just removed: the mark files what is waiting.
func TestRecoveryHonoursAMarkOnAClaimThatNeverRan(t *testing.T) {
	p, s := setup(t)
	pending(t, p, s, "a")
	staleLease(p, s, "a", leaseBody{Node: "dead", Token: "t1", Epoch: 1, Intent: intentRun, State: stateClaiming,
		PendingETag: `"another-version"`, Cancel: "alice"})
	recoverNow(t, p)
	if got := sortedKeys(s); !slices.Equal(got, []string{"fleet/failed/a.json"}) {
		t.Fatalf("objects after recovery = %v, want only failed/a.json", got)
	}
	if o, _ := s.object("fleet/failed/a.json"); o.Metadata[metaOutcome] != "cancelled" {
		t.Errorf("failed/a.json metadata %v, want outcome cancelled", o.Metadata)
	}
}
