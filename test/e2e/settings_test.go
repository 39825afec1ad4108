package e2e

// Settings as the real binary reads them from its environment.

import (
	"syscall"
	"testing"
)

func TestUnknownVariablesWarnedOnceAtStartup(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_CONCURENCY": "8", "CELLOS_FLEET_POOLID": "gpu"})
	warnings := a.logs.events("config.unknown_vars")
	if len(warnings) != 1 {
		t.Fatalf("%d unknown-variable warnings, want 1", len(warnings))
	}
	hints, _ := warnings[0]["did_you_mean"].(map[string]any)
	if hints["CELLOS_FLEET_CONCURENCY"] != "CELLOS_FLEET_CONCURRENCY" || hints["CELLOS_FLEET_POOLID"] != "CELLOS_FLEET_POOL_ID" {
		t.Errorf("did_you_mean = %v, want both misspellings with their closest setting", warnings[0]["did_you_mean"])
	}
	a.signal(syscall.SIGTERM)
	if code := a.wait(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
