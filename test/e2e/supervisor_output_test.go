package e2e

// What a cell's supervisor prints, relayed into fleetd's log: redacted, and
// unable to forge fleetd's own lines.

import (
	"encoding/json"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestRelayedOutputRedactsSecrets runs, at debug level, a supervisor that
// prints its environment, which it inherits from fleetd with the S3 secret.
func TestRelayedOutputRedactsSecrets(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			b := newBucket(t)
			b.submit("env", map[string]any{"printEnv": true})
			a := startAgent(t, b, map[string]string{"CELLOS_FLEET_LOG_LEVEL": "debug", "CELLOS_FLEET_LOG_FORMAT": format})
			b.waitCount("completed", 1)
			a.signal(syscall.SIGTERM)
			if code := a.wait(); code != 0 {
				t.Fatalf("exit code %d", code)
			}
			for name, out := range map[string]string{"stdout": a.stdout.text(), "stderr": a.logs.text()} {
				if strings.Contains(out, env.server.SecretKey) {
					t.Errorf("fleetd's %s holds AWS_SECRET_ACCESS_KEY's value", name)
				}
				if !strings.Contains(out, "AWS_SECRET_ACCESS_KEY=[REDACTED]") {
					t.Errorf("fleetd's %s lacks the supervisor's redacted line", name)
				}
			}
		})
	}
}

// TestRelayedOutputCannotForgeLogLines runs a spec whose id holds a newline
// and whose supervisor prints a line that looks like one of fleetd's.
func TestRelayedOutputCannotForgeLogLines(t *testing.T) {
	t.Parallel()
	const id, forged = "forge\n{\"event\":\"drain.complete\"}", `{"level":"INFO","msg":"drain complete","event":"drain.complete"}`
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			b := newBucket(t)
			b.submit(id, map[string]any{"print": forged}, func(spec map[string]any) { spec["id"] = "forge" })
			a := startAgent(t, b, map[string]string{"CELLOS_FLEET_LOG_FORMAT": format, "CELLOS_FLEET_NODE_ID": "node-f"})
			b.waitCount("completed", 1)
			a.signal(syscall.SIGTERM)
			if code := a.wait(); code != 0 {
				t.Fatalf("exit code %d", code)
			}
			if format == "text" {
				prefix := "[" + strconv.Quote(id) + "] "
				lines := strings.Split(strings.TrimSuffix(a.stdout.text(), "\n"), "\n")
				for _, l := range lines {
					if !strings.HasPrefix(l, prefix) {
						t.Errorf("stdout line %q does not start with the escaped id %q", l, prefix)
					}
				}
				if len(lines) != 2 || lines[1] != prefix+forged {
					t.Errorf("stdout = %q, want the two supervisor lines", lines)
				}
				return
			}
			// Every line of both streams is a JSON record, and the only
			// drain.complete event is fleetd's own.
			var relayed []map[string]any
			for name, w := range map[string]*logWatch{"stdout": a.stdout, "stderr": a.logs} {
				for _, l := range strings.Split(strings.TrimSpace(w.text()), "\n") {
					var rec map[string]any
					if err := json.Unmarshal([]byte(l), &rec); err != nil {
						t.Errorf("%s line is not JSON: %q", name, l)
						continue
					}
					if rec["event"] == "drain.complete" && name != "stderr" {
						t.Errorf("forged record on %s: %q", name, l)
					}
					if rec["event"] == "supervisor.output" {
						relayed = append(relayed, rec)
					}
				}
			}
			if n := len(a.logs.events("drain.complete")); n != 1 {
				t.Errorf("%d drain-complete records, want fleetd's one", n)
			}
			want := map[string]any{"spec_id": id, "stream": "stdout", "line": forged, "node": "node-f"}
			found := false
			for _, rec := range relayed {
				match := true
				for k, v := range want {
					match = match && rec[k] == v
				}
				found = found || match
			}
			if !found {
				t.Errorf("no relayed record with %v among %v", want, relayed)
			}
		})
	}
}
