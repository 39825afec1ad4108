package e2e

// A host that cannot start its supervisor (issue 9) hands work back instead
// of failing the queue's specs.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestBrokenHostDoesNotEatTheQueue: a host whose supervisor lost its run bit
// after startup returns every spec it claims to pending/ unharmed, stops
// claiming and says so (/readyz, a metric, one log line), while a healthy
// node on the same queue runs every spec; once the binary is fixed, the
// broken node claims again by itself.
func TestBrokenHostDoesNotEatTheQueue(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	sup := filepath.Join(t.TempDir(), "supervisor")
	bin, err := os.ReadFile(env.supervisor)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sup, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// Executable when fleetd checks it at startup, not when it runs a spec.
	broken := startAgent(t, b, map[string]string{"CELLOS_FLEET_SUPERVISOR": sup, "CELLOS_FLEET_NODE_ID": "broken",
		"CELLOS_FLEET_CONCURRENCY": "2", "CELLOS_FLEET_METRICS_ADDR": "127.0.0.1:0"})
	addr := metricsAddr(t, broken)
	if err := os.Chmod(sup, 0o644); err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		b.submit(fmt.Sprintf("s-%02d", i), map[string]any{})
	}
	broken.logs.awaitEvent(t, "host.broken", 1)
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 503 || !strings.Contains(body, "supervisor cannot be started") || !strings.Contains(body, "permission denied") {
		t.Errorf("/readyz of the broken node = %d %q, want 503 with the reason", code, body)
	}
	fams := scrape(t, addr)
	if got := sample(t, fams, "fleetd_host_broken"); got != 1 {
		t.Errorf("fleetd_host_broken = %v, want 1", got)
	}
	if got := sample(t, fams, "fleetd_supervisor_start_failures_total"); got < 1 {
		t.Errorf("fleetd_supervisor_start_failures_total = %v, want at least 1", got)
	}

	healthy := startAgent(t, b, map[string]string{"CELLOS_FLEET_NODE_ID": "healthy", "CELLOS_FLEET_CONCURRENCY": "4"})
	b.waitCount("completed", n)
	healthy.signal(syscall.SIGTERM)
	if code := healthy.wait(); code != 0 {
		t.Fatalf("healthy node exit code %d", code)
	}
	if failed := b.ids("failed"); len(failed) != 0 {
		t.Errorf("failed/ holds %v", failed)
	}
	for _, id := range b.ids("completed") {
		// The broken node's tries did not count against the spec.
		if _, meta := b.get(b.key("completed", id)); meta["fleetd-node"] != "healthy" || meta["fleetd-attempts"] != "1" {
			t.Errorf("completed/%s metadata = %v, want run once by healthy", id, meta)
		}
	}
	if lines := broken.logs.countEvent("host.broken"); lines != 1 {
		t.Errorf("%d lines say the host is broken, want 1", lines)
	}
	if code, _ := httpGet(t, "http://"+addr+"/readyz"); code != 503 {
		t.Errorf("/readyz of the broken node = %d after the queue emptied, want 503", code)
	}

	// Fixed: the node's next try starts the supervisor, and it takes work again.
	if err := os.Chmod(sup, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		b.submit(fmt.Sprintf("after-%d", i), map[string]any{})
	}
	b.waitCount("completed", n+3)
	broken.logs.awaitEvent(t, "host.recovered", 1)
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("/readyz of the fixed node = %d %q, want 200", code, body)
	}
	if got := sample(t, scrape(t, addr), "fleetd_host_broken"); got != 0 {
		t.Errorf("fleetd_host_broken = %v after the fix, want 0", got)
	}
	if got := starts(broken.cellEvents()); len(got) != 3 {
		t.Errorf("the fixed node ran %v, want the 3 new specs", got)
	}
	broken.signal(syscall.SIGTERM)
	if code := broken.wait(); code != 0 {
		t.Fatalf("broken node exit code %d", code)
	}
}
