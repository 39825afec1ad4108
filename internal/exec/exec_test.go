package exec

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// script writes an executable shell script and returns its path.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sup")
	// A parallel test's fork must not inherit the write descriptor: exec of
	// the script would fail with "text file busy" until that child execs.
	syscall.ForkLock.RLock()
	err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o700)
	syscall.ForkLock.RUnlock()
	if err != nil {
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
			res := r.Run(context.Background(), "/dev/null", "x", nil)
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
	if res := r.Run(context.Background(), "/tmp/spec.json", "job-1", nil); !res.Succeeded() {
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
	held, gone := heldFifo(t, dir)
	// The child ignores SIGTERM, so only SIGKILL after the grace ends it; its
	// grandchild, holding the FIFO, must die with the group too.
	sup := script(t, `trap '' TERM; (exec 3>`+held+`; touch `+dir+`/ready; exec sleep 300) & wait`)
	r := &Runner{Path: sup, Grace: 200 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result)
	go func() { done <- r.Run(ctx, "/dev/null", "x", nil) }()
	waitFile(t, filepath.Join(dir, "ready"))
	cancel()
	res := <-done
	if !res.Stopped || res.Signal != "SIGKILL" || res.Succeeded() {
		t.Fatalf("Run = %+v, want stopped by SIGKILL", res)
	}
	awaitGone(t, gone)
}

func TestRunEndsWithSupervisorAndStopsLeftovers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		trap  string
		grace time.Duration
	}{
		// A grace of an hour: only the SIGTERM can end the child in time.
		{"leftover obeys SIGTERM", "", time.Hour},
		{"leftover ignores SIGTERM", "trap '' TERM;", 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			held, gone := heldFifo(t, dir)
			// The background child keeps the supervisor's stdout and stderr.
			sup := script(t, `(`+tt.trap+` exec 3>`+held+`; touch `+dir+`/ready; exec sleep 300) &
while [ ! -e `+dir+`/ready ]; do sleep 0.01; done
echo done; exit 0`)
			var out syncBuffer
			r := &Runner{Path: sup, Grace: tt.grace, Stdout: &out}
			done := make(chan Result, 1)
			go func() { done <- r.Run(context.Background(), "/dev/null", "x", nil) }()
			select {
			case res := <-done:
				if !res.Succeeded() {
					t.Errorf("Run = %+v, want the supervisor's exit 0", res)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("cell still open 30s after the supervisor exited: waiting for its child's pipes")
			}
			awaitGone(t, gone)
			if got := out.String(); got != "[x] done\n" {
				t.Errorf("stdout = %q, want the supervisor's line", got)
			}
		})
	}
}

func TestRunRedactsSecrets(t *testing.T) {
	t.Parallel()
	const secret, token = "s3cr3t/Value+40chars", "session-TOKEN-xyz"
	// The long line crosses the 64 KiB cut with the secret astride it.
	long := strings.Repeat("a", maxLine-5)
	sup := script(t, `echo "AWS_SECRET_ACCESS_KEY=`+secret+`"; echo "t=`+token+`;`+token+`" >&2
printf '%s' "`+long+secret+`"; echo " end"`)
	for _, lines := range []bool{false, true} {
		var out, errOut syncBuffer
		r := &Runner{Path: sup, Grace: time.Second, Stdout: &out, Stderr: &errOut, Redact: []string{secret, "", token}}
		if lines {
			r.Lines = func(id, stream, line string) {
				if stream == "stderr" {
					errOut.Write([]byte(line + "\n"))
				} else {
					out.Write([]byte(line + "\n"))
				}
			}
		}
		if res := r.Run(context.Background(), "/dev/null", "x", nil); !res.Succeeded() {
			t.Fatalf("Run = %+v", res)
		}
		all := out.String() + errOut.String()
		if strings.Contains(all, secret) || strings.Contains(all, token) || strings.Contains(all, secret[:10]+"\n") {
			t.Errorf("lines=%v: a secret was relayed:\n%.300s", lines, all)
		}
		if !strings.Contains(out.String(), "AWS_SECRET_ACCESS_KEY=[REDACTED]") || !strings.Contains(errOut.String(), "t=[REDACTED];[REDACTED]") ||
			!strings.Contains(out.String(), "a[REDACTED]") {
			t.Errorf("lines=%v: secrets not replaced by [REDACTED]:\n%.300s", lines, all)
		}
	}
}

func TestRunEscapesIDAndEmitsLines(t *testing.T) {
	t.Parallel()
	sup := script(t, `echo one; echo two >&2`)
	tests := []struct{ id, prefix string }{
		{"job-1", "[job-1] "},
		{"job 1 ü", "[job 1 ü] "},
		{"a\n{\"msg\":\"forged\"}", `["a\n{\"msg\":\"forged\"}"] `},
		{"a\rb", `["a\rb"] `},
		{"a] [b", `["a] [b"] `},
		{"\xff", `["\xff"] `},
	}
	for _, tt := range tests {
		var out syncBuffer
		r := &Runner{Path: sup, Grace: time.Second, Stdout: &out}
		r.Run(context.Background(), "/dev/null", tt.id, nil)
		if got := out.String(); got != tt.prefix+"one\n" {
			t.Errorf("id %q: stdout = %q, want %q", tt.id, got, tt.prefix+"one\n")
		}
	}

	var mu sync.Mutex
	var got []string
	r := &Runner{Path: sup, Grace: time.Second, Lines: func(id, stream, line string) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, id+"|"+stream+"|"+line)
	}}
	r.Run(context.Background(), "/dev/null", "a\nb", nil)
	slices.Sort(got)
	if want := []string{"a\nb|stderr|two", "a\nb|stdout|one"}; !slices.Equal(got, want) {
		t.Errorf("Lines got %q, want %q", got, want)
	}
}

func TestRunStartFailure(t *testing.T) {
	t.Parallel()
	notExec := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(notExec, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/nonexistent/supervisor", notExec} {
		started := false
		res := (&Runner{Path: path, Grace: time.Second}).Run(context.Background(), "/dev/null", "x", func(Cell) { started = true })
		if res.StartErr == nil || res.Succeeded() || started {
			t.Errorf("Run(%s) = %+v, started %v; want a start error and no start", path, res, started)
		}
		if _, err := Check(path); err == nil {
			t.Errorf("Check(%s) = nil, want an error", path)
		}
	}
	if _, err := Check("sh"); err != nil {
		t.Errorf("Check(sh) = %v", err)
	}
	started := false
	if res := (&Runner{Path: "true", Grace: time.Second}).Run(context.Background(), "/dev/null", "x", func(Cell) { started = true }); !res.Succeeded() || !started {
		t.Errorf("Run(true) = %+v, started %v; want success, started", res, started)
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

// heldFifo makes a FIFO for a test's process to hold open for writing. gone
// is closed when the last writer has closed it: the process holding it ended.
func heldFifo(t *testing.T, dir string) (path string, gone <-chan struct{}) {
	t.Helper()
	path = filepath.Join(dir, "held")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{})
	go func() {
		f, err := os.OpenFile(path, os.O_RDONLY, 0) // blocks until a writer opens
		if err != nil {
			return
		}
		defer f.Close()
		_, _ = io.Copy(io.Discard, f)
		close(ch)
	}()
	t.Cleanup(func() {
		// Unblock the reader if no writer ever came.
		if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	return path, ch
}

// awaitGone waits for the process holding a heldFifo to end.
func awaitGone(t *testing.T, gone <-chan struct{}) {
	t.Helper()
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("a process of the cell's group still runs 10s after the cell ended")
	}
}
