package e2e

// Issue 22, weighted lanes: one agent serves several lanes, free slots going
// to lanes with work in proportion to their weights (smooth weighted
// round-robin), or strictly by weight; bad lane lists stop it at start.

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// fillLanes puts n specs in each lane, ids <lane letter><i>.
func fillLanes(b *bucket, n int, lanes ...string) {
	for _, lane := range lanes {
		for i := range n {
			id := fmt.Sprintf("%c%02d", lane[0], i)
			body, _ := json.Marshal(map[string]any{"kind": "ExecutionCell", "spec": map[string]any{"id": id}})
			b.putRaw(b.base+"/"+lane+"/pending/"+id+".json", body)
		}
	}
}

// startOrder waits for n cells started and returns their spec ids in the
// order the agent started them.
func startOrder(t *testing.T, a *agent, n int) []string {
	t.Helper()
	a.logs.awaitEvent(t, "cell.started", n)
	var ids []string
	for _, e := range a.logs.events("cell.started") {
		ids = append(ids, e["spec_id"].(string))
	}
	return ids
}

func TestWeightedLanesShareSlotsByWeight(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	fillLanes(b, 30, "heavy", "light")
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_LANES": "heavy=3,light=1", "CELLOS_FLEET_CONCURRENCY": "1"})
	ids := startOrder(t, a, 20)[:20]
	heavy := 0
	for _, id := range ids {
		if strings.HasPrefix(id, "h") {
			heavy++
		}
	}
	t.Logf("first 20 starts: %d heavy, %d light: %v", heavy, 20-heavy, ids)
	if heavy < 13 || heavy > 17 {
		t.Errorf("%d of the first 20 starts from the lane of weight 3, want 13-17 (15 ± 2)", heavy)
	}
	// Every spec of both lanes runs, each in its own lane's folders.
	a.logs.awaitEvent(t, "spec.finished", 60)
	for _, lane := range []string{"heavy", "light"} {
		if got := len(b.keys(b.base + "/" + lane + "/completed/")); got != 30 {
			t.Errorf("%s/completed/ holds %d, want 30", lane, got)
		}
	}
}

func TestStrictLanesServeALighterLaneOnlyWhenHeavierAreEmpty(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	fillLanes(b, 30, "heavy", "light")
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_LANES": "light=1,heavy=3", "CELLOS_FLEET_LANE_ORDER": "strict",
		"CELLOS_FLEET_CONCURRENCY": "1"})
	ids := startOrder(t, a, 60)
	lastHeavy := slices.IndexFunc(ids, func(id string) bool { return strings.HasPrefix(id, "l") })
	if lastHeavy != 30 {
		t.Errorf("the first light start is #%d, want #30: none of the lighter lane before the heavier is empty: %v", lastHeavy, ids)
	}
}

func TestLanesBadSettingsStopStartup(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	for _, tt := range []map[string]string{
		{"CELLOS_FLEET_LANES": "a=1,a=2"},
		{"CELLOS_FLEET_LANES": "a=0,b=1"},
		{"CELLOS_FLEET_LANES": "a=x"},
		{"CELLOS_FLEET_LANES": "a"},
		{"CELLOS_FLEET_LANES": "_=1,_=3"},
		{"CELLOS_FLEET_LANES": "a=1", "CELLOS_FLEET_QUEUE_NAME": "q"},
		{"CELLOS_FLEET_LANES": "a=1", "CELLOS_FLEET_LANE_ORDER": "random"},
	} {
		code, _, errOut := startAgentExit(t, b, tt)
		name := "CELLOS_FLEET_LANES"
		if _, ok := tt["CELLOS_FLEET_LANE_ORDER"]; ok {
			name = "CELLOS_FLEET_LANE_ORDER"
		}
		if code != 2 || !strings.Contains(errOut, name) {
			t.Errorf("%v: exit %d, %q; want 2 naming %s", tt, code, errOut, name)
		}
	}
}
