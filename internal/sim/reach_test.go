package sim

import (
	"strings"
	"testing"
	"testing/synctest"
)

// TestScenariosReachRetriesAndDelays checks that the scenarios drive the
// paths of issue 22 (a sweep that never retried would prove nothing about
// retries): failed cells retried, delayed specs promoted, schedules' due
// times submitted, and specs of a second lane run by nodes serving lanes. Recoverers
// finishing a retry or a promotion whose holder stopped are rarer (a crash
// inside a few requests' window: about one scenario in 700); they are
// counted here and forced in internal/protocol's tests.
func TestScenariosReachIssue22(t *testing.T) {
	if testing.Short() {
		t.Skip("a sweep")
	}
	def := 600
	if raceOn {
		def = 200
	}
	n := envInt("SIM_REACH_SEEDS", def)
	events := []string{"event=spec.retry ", "event=spec.promoted ", "event=schedule.submitted ", "CELL x1 "}
	rare := []string{"event=recovery.retry_finished ", "intent=promote "}
	seen := map[string]int{}
	for seed := range uint64(n) {
		var r *Result
		synctest.Test(t, func(t *testing.T) { r = Run(seed+1, Options{}) })
		tr := r.Trace()
		for _, e := range append(events, rare...) {
			seen[e] += strings.Count(tr, e)
		}
	}
	t.Logf("over %d scenarios: %v", n, seen)
	for _, e := range events {
		if seen[e] == 0 {
			t.Errorf("no %q in %d scenarios: the simulator does not reach it", e, n)
		}
	}
}
