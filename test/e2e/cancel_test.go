package e2e

// fleetd cancel of pending and running specs.

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestCancelFilesPendingAndStopsRunningSpecs: a pending spec is filed
// cancelled and never runs; a running one is stopped by its node within a
// lease renewal period and filed cancelled.
// Was TestCancel.
func TestCancelFilesPendingAndStopsRunningSpecs(t *testing.T) {
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
	a.logs.awaitEvent(t, "spec.finished", 1) // the result written, claimed/ and the lease deleted
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
