package exec

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// script writes an executable shell script and returns its path.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sup")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunClassifiesExits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		body       string
		wantOK     bool
		wantCode   int
		wantSignal string
	}{
		{"exit 0", `exit 0`, true, 0, ""},
		{"exit 3", `exit 3`, false, 3, ""},
		{"killed", `kill -KILL $$`, false, -1, "SIGKILL"},
		{"terminated", `kill -TERM $$`, false, -1, "SIGTERM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := &Runner{Path: script(t, tt.body), Grace: time.Second}
			res := r.Run(context.Background(), "/dev/null", "x")
			if res.Succeeded() != tt.wantOK || res.ExitCode != tt.wantCode || res.Signal != tt.wantSignal || res.StartErr != nil || res.Stopped {
				t.Fatalf("Run = %+v, want ok=%v code=%d signal=%q", res, tt.wantOK, tt.wantCode, tt.wantSignal)
			}
		})
	}
}

func TestRunPassesSpecPathAndPrefixesOutput(t *testing.T) {
	t.Parallel()
	var out, errOut syncBuffer
	r := &Runner{Path: script(t, `echo "got $1"; echo oops >&2; printf tail`), Grace: time.Second, Stdout: &out, Stderr: &errOut}
	if res := r.Run(context.Background(), "/tmp/spec.json", "job-1"); !res.Succeeded() {
		t.Fatalf("Run = %+v", res)
	}
	if got, want := out.String(), "[job-1] got /tmp/spec.json\n[job-1] tail\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
	if got, want := errOut.String(), "[job-1] oops\n"; got != want {
		t.Errorf("stderr = %q, want %q", got, want)
	}
}

func TestRunStopsProcessGroup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The child ignores SIGTERM, so only SIGKILL after the grace ends it; its
	// grandchild must die with the group too.
	sup := script(t, `trap '' TERM; sleep 300 & echo $! > `+dir+`/child; touch `+dir+`/ready; wait`)
	r := &Runner{Path: sup, Grace: 200 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result)
	go func() { done <- r.Run(ctx, "/dev/null", "x") }()
	waitFile(t, filepath.Join(dir, "ready"))
	cancel()
	res := <-done
	if !res.Stopped || res.Signal != "SIGKILL" || res.Succeeded() {
		t.Fatalf("Run = %+v, want stopped by SIGKILL", res)
	}
	pid, _ := os.ReadFile(filepath.Join(dir, "child"))
	if _, err := os.Stat("/proc/" + strings.TrimSpace(string(pid))); err == nil {
		// A killed process may linger briefly as a zombie of init; check its state.
		st, _ := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/stat")
		if !strings.Contains(string(st), ") Z") {
			t.Errorf("grandchild %s still running: %s", pid, st)
		}
	}
}

func TestRunStartFailure(t *testing.T) {
	t.Parallel()
	notExec := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(notExec, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/nonexistent/supervisor", notExec} {
		res := (&Runner{Path: path, Grace: time.Second}).Run(context.Background(), "/dev/null", "x")
		if res.StartErr == nil || res.Succeeded() {
			t.Errorf("Run(%s) = %+v, want a start error", path, res)
		}
		if _, err := Check(path); err == nil {
			t.Errorf("Check(%s) = nil, want an error", path)
		}
	}
	if _, err := Check("sh"); err != nil {
		t.Errorf("Check(sh) = %v", err)
	}
}

// waitFile polls for a file the script creates: the event the test awaits.
func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}
