// Package exec runs a supervisor on one spec: in its own process group, with its
// output attributed to the spec, stopped with SIGTERM then SIGKILL when asked.
package exec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	osexec "os/exec"
	"sync"
	"syscall"
	"time"
)

// Result is how a supervisor run ended.
type Result struct {
	// ExitCode is the process's exit status; -1 when a signal ended it or it
	// never started.
	ExitCode int
	// Signal names the signal that ended the process ("SIGKILL"), if one did.
	Signal string
	// Stopped is true when the run was stopped because its context ended.
	Stopped  bool
	Duration time.Duration
	// StartErr is set when the supervisor could not be started at all.
	StartErr error
}

// Succeeded reports whether the supervisor exited 0 on its own.
func (r Result) Succeeded() bool {
	return r.StartErr == nil && r.ExitCode == 0 && r.Signal == "" && !r.Stopped
}

// String describes the outcome for logs and result records.
func (r Result) String() string {
	switch {
	case r.StartErr != nil:
		return "start failed: " + r.StartErr.Error()
	case r.Signal != "":
		return "killed by " + r.Signal
	default:
		return fmt.Sprintf("exit %d", r.ExitCode)
	}
}

// Runner starts the supervisor binary as `<Path> <spec-path>`.
type Runner struct {
	Path string
	// Grace is how long a stopped supervisor has between SIGTERM and SIGKILL.
	Grace time.Duration
	// Stdout and Stderr receive the supervisor's output, each line prefixed
	// with the spec id. Nil discards it.
	Stdout, Stderr io.Writer
}

// Run starts the supervisor on specPath and blocks until it exits. When ctx
// ends first, its whole process group gets SIGTERM, then SIGKILL after Grace.
func (r *Runner) Run(ctx context.Context, specPath, specID string) Result {
	cmd := osexec.Command(r.Path, specPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout := newLineWriter(r.Stdout, specID)
	stderr := newLineWriter(r.Stderr, specID)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// A grandchild that keeps the output pipes open must not hold Wait forever.
	cmd.WaitDelay = r.Grace + time.Second

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Result{ExitCode: -1, StartErr: err}
	}
	pgid := cmd.Process.Pid

	waited := make(chan struct{})
	var stopped bool
	stopDone := make(chan struct{})
	go func() {
		defer close(stopDone)
		select {
		case <-waited:
			return
		case <-ctx.Done():
		}
		stopped = true
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		t := time.NewTimer(r.Grace)
		defer t.Stop()
		select {
		case <-waited:
		case <-t.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
	}()
	err := cmd.Wait()
	close(waited)
	<-stopDone
	stdout.flush()
	stderr.flush()

	res := Result{ExitCode: -1, Stopped: stopped, Duration: time.Since(start)}
	var exitErr *osexec.ExitError
	if err != nil && !errors.As(err, &exitErr) && !errors.Is(err, osexec.ErrWaitDelay) {
		res.StartErr = fmt.Errorf("wait %s: %w", r.Path, err)
		return res
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		res.Signal = signalName(ws.Signal())
		return res
	}
	res.ExitCode = cmd.ProcessState.ExitCode()
	return res
}

// Check reports whether path names an executable file, resolving it on PATH
// when it has no slash, and returns the resolved path.
func Check(path string) (string, error) {
	resolved, err := osexec.LookPath(path)
	if err != nil {
		return "", fmt.Errorf("supervisor %q: %w", path, err)
	}
	return resolved, nil
}

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return fmt.Sprintf("signal %d", int(s))
}

// lineWriter prefixes each complete line with "[id] " and writes it whole, so
// lines of concurrent cells don't interleave mid-line.
type lineWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix []byte
	buf    []byte
}

// maxLine bounds the buffer for output that never ends a line.
const maxLine = 64 << 10

func newLineWriter(w io.Writer, id string) *lineWriter {
	if w == nil {
		w = io.Discard
	}
	return &lineWriter{w: w, prefix: []byte("[" + id + "] ")}
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			if len(l.buf) >= maxLine {
				l.emit(append(l.buf, '\n'))
				l.buf = l.buf[:0]
			}
			return len(p), nil
		}
		l.emit(l.buf[:i+1])
		l.buf = l.buf[i+1:]
	}
}

func (l *lineWriter) emit(line []byte) {
	out := make([]byte, 0, len(l.prefix)+len(line))
	out = append(append(out, l.prefix...), line...)
	_, _ = l.w.Write(out)
}

func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.emit(append(l.buf, '\n'))
		l.buf = nil
	}
}
