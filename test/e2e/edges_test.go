package e2e

// Integration tests of the edges a real fleet hits: misspelt settings,
// supervisor output (secrets, forged lines, JSON records) and leftover
// processes, and tools facing a missing bucket.

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// runToolWith runs a fleetd subcommand with the test server's environment and
// vars over it, and returns its exit code and stderr.
func runToolWith(t *testing.T, vars []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(env.fleetd, args...)
	cmd.Env = append(append(os.Environ(), env.server.Env()...), vars...)
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("run fleetd %v: %v", args, err)
	}
	return cmd.ProcessState.ExitCode(), errOut.String()
}

func TestToolsNameTheRealCause(t *testing.T) {
	t.Parallel()
	spec := writeFile(t, "job.json", `{"spec":{"id":"job-1"}}`)
	missing := []string{"CELLOS_FLEET_BUCKET=no-such-bucket-here"}
	for _, args := range [][]string{{"inspect", "job-1"}, {"status"}, {"requeue", "job-1"}, {"submit", spec}} {
		if code, errOut := runToolWith(t, missing, args...); code != 1 || !strings.Contains(errOut, "no such bucket") {
			t.Errorf("%v on a missing bucket = %d %q, want 1 naming the missing bucket", args, code, errOut)
		}
	}
	if _, errOut := runToolWith(t, missing, "inspect", "job-1"); !strings.Contains(errOut, `bucket "no-such-bucket-here" does not exist`) {
		t.Errorf("inspect on a missing bucket: %q, want the bucket named", errOut)
	}

	b := newBucket(t)
	existing := []string{"CELLOS_FLEET_BUCKET=" + b.name}
	if code, errOut := runToolWith(t, existing, "inspect", "job-1"); code != 1 || !strings.Contains(errOut, "spec job-1 not found") {
		t.Errorf("inspect of a missing spec = %d %q, want 1 and not found", code, errOut)
	}
	wrongSecret := append(existing, "AWS_SECRET_ACCESS_KEY=wrong-secret")
	if code, errOut := runToolWith(t, wrongSecret, "inspect", "job-1"); code != 1 || !strings.Contains(errOut, "access denied") {
		t.Errorf("inspect with a wrong secret = %d %q, want 1 and access denied", code, errOut)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	if code, errOut := runToolWith(t, append(existing, "AWS_ENDPOINT_URL_S3="+dead), "inspect", "job-1"); code != 1 || !strings.Contains(errOut, "cannot reach the S3 endpoint ("+dead+")") {
		t.Errorf("inspect with S3 unreachable = %d %q, want 1 and the endpoint named", code, errOut)
	}
}
