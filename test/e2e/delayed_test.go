package e2e

// Issue 22, delayed specs: `fleetd submit --in/--at`, or a key written by
// hand under pending/.delayed/<due>/, starts no sooner than its due time and
// within a poll interval (and a second) after it; fleetd status lists it with
// its due time; fleetd cancel files it cancelled.

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cellos/fleetd/internal/admin"
)

// startOf waits for the first start of id in a's cell events.
func startOf(t *testing.T, b *bucket, a *agent, id string) time.Time {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range a.cellEvents() {
			if e.what == "start" && e.id == id {
				return time.Unix(0, e.at)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never started", id)
	return time.Time{}
}

func TestDelayedSpecStartsWithinAPollOfItsDueTime(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	const poll = time.Second
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_POLL_INTERVAL_MS": "1000"})
	before := time.Now()
	code, out, errOut := runToolOn(t, b, nil, "submit", "--in", "5s", "--json", specFile(t, "later", nil))
	if code != 0 {
		t.Fatalf("submit --in 5s: exit %d\n%s%s", code, out, errOut)
	}
	var sub []admin.Submitted
	if err := json.Unmarshal([]byte(out), &sub); err != nil || len(sub) != 1 {
		t.Fatalf("submit output %q: %v", out, err)
	}
	due := sub[0].NotBefore
	if due.Before(before.Add(5*time.Second)) || due.After(time.Now().Add(5*time.Second)) || !strings.Contains(sub[0].Key, "/pending/.delayed/") {
		t.Fatalf("submitted as %s not before %v, want a delayed key due 5 s after the submit (%v)", sub[0].Key, due, before)
	}

	// fleetd status shows it, with its due time, before it runs.
	code, out, _ = runToolOn(t, b, nil, "status", "--json")
	var st admin.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("status: exit %d, %q: %v", code, out, err)
	}
	if len(st.Delayed) != 1 || st.Delayed[0].ID != "later" || !st.Delayed[0].Due.Equal(due.Truncate(time.Millisecond)) || st.Counts["delayed"] != 1 {
		t.Errorf("status delayed %+v (count %d), want later due %v", st.Delayed, st.Counts["delayed"], due)
	}

	started := startOf(t, b, a, "later")
	if started.Before(due) {
		t.Errorf("started at %v, before its due time %v", started, due)
	}
	if late := started.Sub(due); late > poll+time.Second {
		t.Errorf("started %v after its due time, want within a poll interval (%v) and a second", late, poll)
	}
	t.Logf("--in 5s: started %v after the submit, %v after the due time", started.Sub(before), started.Sub(due))
	b.waitCount("completed", 1)
	if keys := b.keys(b.base + "/pending/"); len(keys) != 0 {
		t.Errorf("left under pending/: %v", keys)
	}
}

func TestDelayedSpecWrittenByHand(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_POLL_INTERVAL_MS": "500"})
	// As `aws s3 cp` would: whole seconds, no milliseconds.
	due := time.Now().Add(3 * time.Second).Truncate(time.Second)
	body, _ := json.Marshal(map[string]any{"kind": "ExecutionCell", "spec": map[string]any{"id": "byhand"}})
	b.putRaw(b.base+"/pending/.delayed/"+due.UTC().Format("20060102T150405Z")+"/byhand.json", body)
	started := startOf(t, b, a, "byhand")
	if started.Before(due) || started.Sub(due) > 1500*time.Millisecond {
		t.Errorf("started at %v, want within [due, due + poll + 1 s] of %v", started, due)
	}
	b.waitCount("completed", 1)
}

func TestCancelOfADelayedSpecFilesIt(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	if code, out, errOut := runToolOn(t, b, nil, "submit", "--at", time.Now().Add(time.Hour).UTC().Format(time.RFC3339), specFile(t, "nightly", nil)); code != 0 {
		t.Fatalf("submit --at: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut := runToolOn(t, b, map[string]string{"CELLOS_FLEET_LEASE_TTL_MS": "3000"}, "cancel", "nightly")
	if code != 0 {
		t.Fatalf("cancel: exit %d\n%s%s", code, out, errOut)
	}
	if got := b.keys(b.base + "/"); len(got) != 1 || got[0] != b.key("failed", "nightly") {
		t.Fatalf("objects after cancel: %v, want only failed/nightly.json", got)
	}
	if _, meta := b.get(b.key("failed", "nightly")); meta["fleetd-outcome"] != "cancelled" {
		t.Errorf("failed record %v, want outcome cancelled", meta)
	}
}
