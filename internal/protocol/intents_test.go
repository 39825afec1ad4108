package protocol

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/s3mem"
	"github.com/cellos/fleetd/internal/store"
)

// staleLease writes l as a lease its holder stopped renewing long ago.
func staleLease(p *Protocol, s *faultStore, id string, l leaseBody) {
	l.TTLMillis = MinTTL.Milliseconds()
	body, _ := encodeLease(&l, time.Now())
	key := p.cfg.Layout.Key(store.Leases, id)
	s.PutAt(key, body, nil, time.Now().Add(-MinTTL-2*time.Second))
}

func recoverNow(t *testing.T, p *Protocol) {
	t.Helper()
	if err := p.recoverScan(context.Background(), make(chan struct{}), true); err != nil {
		t.Fatal(err)
	}
}

func sortedKeys(s *faultStore) []string {
	ks := s.keys()
	slices.Sort(ks)
	return ks
}

// TestRecoveryFinishesAnInterruptedFiling: a cancel or reject stopped
// between writing failed/ and deleting pending/ is finished by recovery, not
// read as a claim whose result exists (which left pending/ to run again).
func TestRecoveryFinishesAnInterruptedFiling(t *testing.T) {
	for _, tt := range []struct {
		name    string
		lease   leaseBody
		written bool // failed/ holds the filing's record
		want    []string
	}{
		{"filed, pending/ not yet deleted", leaseBody{Token: "t1", Intent: intentFile, State: stateRejecting}, true, []string{"fleet/failed/a.json"}},
		{"a lease written before intents", leaseBody{Token: "t1", State: stateRejecting}, true, []string{"fleet/failed/a.json"}},
		{"a successor's lease", leaseBody{Token: "t1", Intent: intentFile, State: stateRejecting}.successor("r1", "t2", MinTTL), true, []string{"fleet/failed/a.json"}},
		{"nothing filed: undone, pending/ stays", leaseBody{Token: "t1", Intent: intentFile, State: stateRejecting}, false, []string{"fleet/pending/a.json"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, s := setup(t)
			spec := pending(t, p, s, "a")
			l := tt.lease
			l.Node, l.PendingETag = "tool", spec.ETag
			staleLease(p, s, "a", l)
			if tt.written {
				failed := p.cfg.Layout.Key(store.Failed, "a")
				s.PutAt(failed, spec.Body, map[string]string{metaToken: "t1", metaOutcome: string(Cancelled)}, time.Now())
			}
			recoverNow(t, p)
			if got := sortedKeys(s); !slices.Equal(got, tt.want) {
				t.Errorf("objects after recovery = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestRequeueSurvivesTwoStoppedHolders: the requeue's facts travel with every
// successor's lease, so the third holder finishes it: failed/ goes, pending/
// stays — not both folders.
func TestRequeueSurvivesTwoStoppedHolders(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	failed := p.cfg.Layout.Key(store.Failed, "a")
	s.PutAt(failed, spec.Body, nil, time.Now())
	tool := leaseBody{Node: "tool", Token: "t1", Epoch: 1, Intent: intentRequeue, State: stateRequeueing, FailedETag: spec.ETag}
	staleLease(p, s, "a", tool.successor("r1", "t2", MinTTL))
	recoverNow(t, p)
	if got, want := sortedKeys(s), []string{"fleet/pending/a.json"}; !slices.Equal(got, want) {
		t.Errorf("objects after recovery = %v, want %v", got, want)
	}
}

// TestCancelMarkIsHonouredByARelease: a cancel that lands while the cell is
// stopped for another reason (its holder fenced, or the drain deadline) is
// honoured by the release: the spec is filed cancelled, not run again.
func TestCancelMarkIsHonouredByARelease(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	c, err := p.Claim(context.Background(), make(chan struct{}), spec)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := New(p.cfg, s).Cancel(context.Background(), "a", "bob"); err != nil || res.Node != "n1" {
		t.Fatalf("Cancel = %+v, %v; want the holder asked", res, err)
	}
	if err := c.Release(context.Background(), make(chan struct{}), false); err != nil {
		t.Fatal(err)
	}
	if got, want := sortedKeys(s), []string{"fleet/failed/a.json"}; !slices.Equal(got, want) {
		t.Fatalf("objects after the release = %v, want %v", got, want)
	}
	if o, _ := s.object("fleet/failed/a.json"); o.Metadata[metaOutcome] != string(Cancelled) {
		t.Errorf("failed/a.json outcome %q, want cancelled", o.Metadata[metaOutcome])
	}
}

// TestCancelMarkOnAnUnconsumedClaimIsHonoured: a holder marked cancelled
// that stopped before consuming pending/ leaves its recoverer the mark; the
// pending spec is filed cancelled rather than left to run.
func TestCancelMarkOnAnUnconsumedClaimIsHonoured(t *testing.T) {
	p, s := setup(t)
	spec := pending(t, p, s, "a")
	staleLease(p, s, "a", leaseBody{Node: "dead", Token: "t1", Epoch: 1, Intent: intentRun, State: stateClaiming,
		PendingETag: spec.ETag, Attempts: 1, Cancel: "bob"})
	recoverNow(t, p)
	if got, want := sortedKeys(s), []string{"fleet/failed/a.json"}; !slices.Equal(got, want) {
		t.Fatalf("objects after recovery = %v, want %v", got, want)
	}
	if o, _ := s.object("fleet/failed/a.json"); o.Metadata[metaOutcome] != string(Cancelled) {
		t.Errorf("failed/a.json outcome %q, want cancelled", o.Metadata[metaOutcome])
	}
}

// TestPruneLeavesAFreshResultOfAnIdenticalRerun: the result listed old was
// replaced by a rerun's (same bytes, same ETag) before prune's delete: the
// age read under the lease keeps it.
func TestPruneLeavesAFreshResultOfAnIdenticalRerun(t *testing.T) {
	p, s := setup(t)
	body := []byte(`{"spec":{"id":"a"}}`)
	key := p.cfg.Layout.Key(store.Completed, "a")
	for _, tt := range []struct {
		name    string
		age     time.Duration
		wantErr error
	}{
		{"fresh rerun", 0, ErrGone},
		{"old", 2 * time.Hour, nil},
	} {
		s.PutAt(key, body, nil, time.Now().Add(-tt.age))
		err := p.Prune(context.Background(), key, s3mem.ETag(body), time.Hour)
		if !errors.Is(err, tt.wantErr) && (err != nil || tt.wantErr != nil) {
			t.Errorf("%s: Prune = %v, want %v", tt.name, err, tt.wantErr)
		}
		if got := s.has(key); got != (tt.wantErr != nil) {
			t.Errorf("%s: result present after prune = %v", tt.name, got)
		}
		if s.has(p.cfg.Layout.Key(store.Leases, "a")) {
			t.Errorf("%s: prune left its lease", tt.name)
		}
	}
}
