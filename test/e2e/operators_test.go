package e2e

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestPauseAcrossAgents: fleetd pause stops two agents from claiming within
// a poll interval; they stay up and say so; resume lets them run the backlog.
func TestPauseAcrossAgents(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	agents := []*agent{startAgent(t, b, nil), startAgent(t, b, nil)}
	if code, out, errOut := runCLI(t, b, "pause"); code != 0 || !strings.Contains(out, "paused fleet") {
		t.Fatalf("pause = %d %q %q", code, out, errOut)
	}
	for _, a := range agents {
		a.logs.awaitEvent(t, "queue.paused", 1)
	}
	for i := range 3 {
		b.submit("held-"+string(rune('a'+i)), map[string]any{})
	}
	for _, a := range agents {
		awaitPolls(t, a, 3) // three listings that saw the specs and the marker
	}
	if got := b.ids("pending"); len(got) != 4 || got[0] != "!paused" {
		t.Errorf("pending/ = %v while paused, want the marker and the 3 specs", got)
	}
	for _, a := range agents {
		if n := len(a.cellEvents()); n != 0 {
			t.Errorf("a paused agent ran %d cells", n)
		}
	}
	if code, out, _ := runCLI(t, b, "status"); code != 0 || !strings.Contains(out, "paused by") {
		t.Errorf("status while paused = %d %q, want it to say so", code, out)
	}
	if code, out, errOut := runCLI(t, b, "resume"); code != 0 || !strings.Contains(out, "resumed fleet") {
		t.Fatalf("resume = %d %q %q", code, out, errOut)
	}
	b.waitCount("completed", 3)
	for _, a := range agents {
		a.logs.awaitEvent(t, "queue.resumed", 1)
		a.signal(syscall.SIGTERM)
		if code := a.wait(); code != 0 {
			t.Errorf("exit code %d", code)
		}
	}
}

// TestCancel: a pending spec is filed cancelled and never runs; a running one
// is stopped by its node within a lease renewal period and filed cancelled.
func TestCancel(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	b.submit("waiting", map[string]any{})
	if code, out, errOut := runCLI(t, b, "cancel", "waiting"); code != 0 || !strings.Contains(out, "filed under failed/") {
		t.Fatalf("cancel of a pending spec = %d %q %q", code, out, errOut)
	}
	if _, meta := b.get(b.key("failed", "waiting")); meta["fleetd-outcome"] != "cancelled" || !strings.HasPrefix(meta["fleetd-reason"], "cancelled by ") {
		t.Errorf("failed/waiting record = %v", meta)
	}

	never := filepath.Join(t.TempDir(), "never")
	b.submit("long", map[string]any{"waitFor": never})
	a := startAgent(t, b, fast(map[string]string{"CELLOS_FLEET_NODE_ID": "worker"}))
	a.logs.awaitEvent(t, "cell.started", 1)
	if code, out, errOut := runCLI(t, b, "cancel", "long"); code != 0 || !strings.Contains(out, "node worker stops it") {
		t.Fatalf("cancel of a running spec = %d %q %q", code, out, errOut)
	}
	a.logs.awaitEvent(t, "spec.cancelled", 1)
	a.logs.awaitEvent(t, "spec.finalised", 1) // the result written, claimed/ and the lease deleted
	b.waitCount("failed", 2)
	if _, meta := b.get(b.key("failed", "long")); meta["fleetd-outcome"] != "cancelled" || meta["fleetd-node"] != "worker" {
		t.Errorf("failed/long record = %v", meta)
	}
	for _, state := range []string{"pending", "claimed", "leases", "completed"} {
		if left := b.ids(state); len(left) != 0 {
			t.Errorf("%s/ holds %v", state, left)
		}
	}
	if runs := starts(a.cellEvents()); runs["waiting"] != 0 || runs["long"] != 1 {
		t.Errorf("runs = %v, want long once and waiting never", runs)
	}
	if code, _, errOut := runCLI(t, b, "cancel", "nope"); code != 1 || !strings.Contains(errOut, "neither pending nor in flight") {
		t.Errorf("cancel nope = %d %q", code, errOut)
	}
	a.signal(syscall.SIGTERM)
	a.wait()
}
