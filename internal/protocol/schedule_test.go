package protocol

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

func due(at time.Time, body []byte) Due {
	return Due{ID: "tick-" + at.UTC().Format("20060102T150405Z"), Schedule: "tick", At: at,
		MarkerKey: "fleet/schedules/tick.last", DefKey: "fleet/schedules/tick.json", Body: body}
}

func markerAt(t *testing.T, s *faultStore) time.Time {
	t.Helper()
	o, ok := s.object("fleet/schedules/tick.last")
	if !ok {
		return time.Time{}
	}
	at, err := ParseMarker(o.Body)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// TestSubmitDueOnce: a due time is submitted once, whoever asks and however
// often — also after its spec was consumed, which a create-only PUT alone
// would not see — and the marker only moves forward.
func TestSubmitDueOnce(t *testing.T) {
	p, s := setup(t)
	body := []byte(`{"spec":{"id":"tick"}}`)
	t0 := time.Date(2026, 12, 6, 19, 0, 0, 0, time.UTC)
	ctx, quit := context.Background(), make(chan struct{})
	if sub, err := p.SubmitDue(ctx, quit, due(t0, body)); err != nil || !sub {
		t.Fatalf("first: %v %v", sub, err)
	}
	if got := sortedKeys(s); !slices.Equal(got, []string{"fleet/pending/tick-20261206T190000Z.json", "fleet/schedules/tick.last"}) {
		t.Fatalf("objects %v", got)
	}
	s.remove(t, "fleet/pending/tick-20261206T190000Z.json") // consumed by a run
	if sub, err := p.SubmitDue(ctx, quit, due(t0, body)); err != nil || sub {
		t.Errorf("again after its spec ran: submitted %v (%v), want nothing", sub, err)
	}
	t1 := t0.Add(5 * time.Second)
	if sub, _ := p.SubmitDue(ctx, quit, due(t1, body)); !sub || !markerAt(t, s).Equal(t1) {
		t.Errorf("the next due time: submitted %v, marker %v; want %v", sub, markerAt(t, s), t1)
	}
	if sub, _ := p.SubmitDue(ctx, quit, due(t0, body)); sub || !markerAt(t, s).Equal(t1) {
		t.Errorf("an older due time after a newer one: submitted %v, marker %v; want nothing, %v", sub, markerAt(t, s), t1)
	}
}

// TestSubmitDueWithLostAnswers: the pending/ PUT and the marker's
// compare-and-swap land with their answers lost: still one spec, the marker
// moved.
func TestSubmitDueWithLostAnswers(t *testing.T) {
	p, s := setup(t)
	s.lose = func(op, key string) bool { return op == "PUT" && key != "fleet/leases/tick-20261206T190000Z.json" }
	t0 := time.Date(2026, 12, 6, 19, 0, 0, 0, time.UTC)
	if _, err := p.SubmitDue(context.Background(), make(chan struct{}), due(t0, []byte(`{}`))); err != nil {
		t.Fatal(err)
	}
	if got := sortedKeys(s); !slices.Equal(got, []string{"fleet/pending/tick-20261206T190000Z.json", "fleet/schedules/tick.last"}) || !markerAt(t, s).Equal(t0) {
		t.Errorf("objects %v, marker %v", got, markerAt(t, s))
	}
}

// TestRecoveryFinishesAScheduleSubmission: a holder stopped anywhere ends as
// it would have: the spec there once, the marker moved; a schedule removed
// before its spec was written submits nothing.
func TestRecoveryFinishesAScheduleSubmission(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 19, 0, 0, 0, time.UTC)
	const spec = "fleet/pending/tick-20261206T190000Z.json"
	for _, tt := range []struct {
		name           string
		def, written   bool // the schedule exists; the holder wrote pending/
		wantPending    bool
		wantMarkerMove bool
	}{
		{"stopped before pending/", true, false, true, true},
		{"stopped after pending/, before the marker", true, true, true, true},
		{"schedule removed, nothing written", false, false, false, false},
		{"schedule removed after pending/", false, true, true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, s := setup(t)
			if tt.def {
				s.PutAt("fleet/schedules/tick.json", []byte(`{"spec":{}}`), map[string]string{"fleetd-cron": "@every 5s"}, time.Now())
			}
			if tt.written {
				s.PutAt(spec, []byte(`{"spec":{}}`), map[string]string{metaToken: "t1"}, time.Now())
			}
			staleLease(p, s, "tick-20261206T190000Z", leaseBody{Node: "dead", Token: "t1", Epoch: 1, Intent: intentSchedule, State: stateScheduling,
				ScheduleDue: t0.Format(time.RFC3339), MarkerKey: "fleet/schedules/tick.last", DefKey: "fleet/schedules/tick.json"})
			recoverNow(t, p)
			if s.has(spec) != tt.wantPending {
				t.Errorf("pending/ there: %v, want %v", s.has(spec), tt.wantPending)
			}
			if moved := markerAt(t, s).Equal(t0); moved != tt.wantMarkerMove {
				t.Errorf("marker %v, want moved to %v: %v", markerAt(t, s), t0, tt.wantMarkerMove)
			}
			if s.has(p.cfg.Layout.Key(store.Leases, "tick-20261206T190000Z")) {
				t.Error("lease left")
			}
		})
	}
}
