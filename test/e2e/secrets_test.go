package e2e

// No credential or request signature reaches any output of fleetd.

import (
	"strings"
	"syscall"
	"testing"
)

// TestNoSecretsInLogs runs at debug level through success and failure paths
// and checks that no credential or signature reaches any output.
func TestNoSecretsInLogs(t *testing.T) {
	t.Parallel()
	b := newBucket(t)
	b.submit("ok", map[string]any{})
	b.putRaw(b.key("pending", "bad"), []byte("nope"))
	a := startAgent(t, b, map[string]string{"CELLOS_FLEET_LOG_LEVEL": "debug"})
	b.waitCount("completed", 1)
	b.waitCount("failed", 1)
	a.signal(syscall.SIGTERM)
	a.wait()

	// A second agent with a wrong secret is refused by S3: the self-test logs
	// the answer and stops fleetd (exit 2), and still must not log the secret.
	const wrongSecret = "fleetd-distinctive-secret-7f3a9c"
	bad := startAgent(t, b, map[string]string{"AWS_SECRET_ACCESS_KEY": wrongSecret})
	if code := bad.wait(); code != 2 {
		t.Errorf("fleetd with a wrong secret exited %d, want 2", code)
	}
	if bad.logs.countEvent("selftest.failed") != 1 {
		t.Errorf("no self-test failure logged:\n%s", bad.logs.text())
	}

	for _, out := range []string{a.logs.text(), a.stdout.text(), bad.logs.text(), bad.stdout.text()} {
		for _, secret := range []string{env.server.SecretKey, wrongSecret, "Signature=", "Authorization", "X-Amz-Security-Token"} {
			if strings.Contains(out, secret) {
				t.Errorf("output contains %q", secret)
			}
		}
	}
}
