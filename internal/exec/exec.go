// Package exec runs a supervisor on one spec: in its own process group, with its
// output attributed to the spec, stopped with SIGTERM then SIGKILL when asked.
package exec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	osexec "os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
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
	// Grace is how long a stopped supervisor, or what it leaves behind, has
	// between SIGTERM and SIGKILL.
	Grace time.Duration
	// Stdout and Stderr receive the supervisor's output, each line prefixed
	// with the spec id (escaped). Nil discards it.
	Stdout, Stderr io.Writer
	// Lines, if set, receives each output line instead, without its newline;
	// stream is "stdout" or "stderr". It may be called from several goroutines.
	Lines func(specID, stream, line string)
	// Redact lists values, fleetd's own secrets, replaced by "[REDACTED]" in
	// the relayed output: the supervisor inherits them and may print them.
	Redact []string
	// Output, if set, also receives each line as relayed (redacted, without
	// its newline), whichever way it is relayed: the spec's own copy of its
	// output. It may be called from several goroutines.
	Output func(specID, stream, line string)
}

// killWait bounds the wait for a SIGKILLed process group to be gone.
const killWait = 5 * time.Second

// pipeWait bounds the wait for the output pipes once the process group is
// gone: only a process that left the group can still hold them.
const pipeWait = time.Second

// Cell is a running supervisor's process group, which fleetd can freeze in
// place and thaw, or kill while frozen, so that it makes no progress while
// its claim is not valid and never runs again once the claim is lost.
type Cell interface {
	// Freeze stops every process of the group where it stands (SIGSTOP).
	Freeze() error
	// Thaw lets a frozen group go on (SIGCONT): it never knew.
	Thaw() error
	// Kill ends the group without letting it run a line more (SIGKILL,
	// which a stopped process receives without being continued).
	Kill() error
}

// group is a supervisor's process group: its pgid is the supervisor's pid.
type group int

func (g group) Freeze() error { return signalGroup(int(g), syscall.SIGSTOP) }

func (g group) Thaw() error { return signalGroup(int(g), syscall.SIGCONT) }

func (g group) Kill() error { return signalGroup(int(g), syscall.SIGKILL) }

func signalGroup(pgid int, sig syscall.Signal) error {
	if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to process group %d: %w", sig, pgid, err)
	}
	return nil
}

// Run starts the supervisor on specPath and blocks until it exits; started,
// if not nil, is called once the process is running, with its group. When ctx
// ends first, its whole process group gets SIGTERM, then SIGKILL after Grace.
// The cell ends with the supervisor: what it leaves in its process group is
// stopped the same way, so no background child outlives the cell.
func (r *Runner) Run(ctx context.Context, specPath, specID string, started func(Cell)) Result {
	cmd := osexec.Command(r.Path, specPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Pipes of our own rather than os/exec's: its Wait would also wait for
	// every process holding them, a background child included.
	outR, outW, err := os.Pipe()
	if err != nil {
		return Result{ExitCode: -1, StartErr: err}
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return Result{ExitCode: -1, StartErr: err}
	}
	cmd.Stdout, cmd.Stderr = outW, errW

	start := time.Now()
	err = cmd.Start()
	outW.Close() // the children hold the write ends now
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return Result{ExitCode: -1, StartErr: err}
	}
	if started != nil {
		started(group(cmd.Process.Pid))
	}
	var relays sync.WaitGroup
	for _, p := range []struct {
		r      *os.File
		w      io.Writer
		stream string
	}{{outR, r.Stdout, "stdout"}, {errR, r.Stderr, "stderr"}} {
		lw := r.newLineWriter(p.w, specID, p.stream)
		relays.Go(func() {
			_, _ = io.Copy(lw, p.r)
			lw.flush()
		})
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
	err = cmd.Wait()
	close(waited)
	ran := time.Since(start)
	<-stopDone
	r.stopGroup(pgid)

	relayed := make(chan struct{})
	go func() { relays.Wait(); close(relayed) }()
	select {
	case <-relayed:
	case <-time.After(pipeWait):
		outR.Close()
		errR.Close()
		<-relayed
	}
	outR.Close()
	errR.Close()

	res := Result{ExitCode: -1, Stopped: stopped, Duration: ran}
	var exitErr *osexec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
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

// stopGroup stops what is left of the process group pgid after its leader,
// the supervisor, exited: SIGTERM, then SIGKILL after the grace. It returns
// once the group is gone, or killWait after the SIGKILL.
func (r *Runner) stopGroup(pgid int) {
	if groupGone(pgid) {
		return
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	if waitGroupGone(pgid, r.Grace) {
		return
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	waitGroupGone(pgid, killWait)
}

// waitGroupGone polls until the group is gone or d has passed: no event
// tells a non-parent that another process ended.
func waitGroupGone(pgid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !groupGone(pgid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// groupGone reaps the group's dead members that are fleetd's children (they
// are when fleetd is PID 1 or a subreaper) and reports whether the group has
// no live process left. Zombies don't count: they hold nothing, and their
// parent reaps them in its own time (some inits take a second).
func groupGone(pgid int) bool {
	for {
		pid, err := syscall.Wait4(-pgid, nil, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			break
		}
	}
	if errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) {
		return true
	}
	live, ok := liveMember(pgid)
	return ok && !live
}

// liveMember reports whether /proc shows a process of group pgid that is not
// a zombie; ok is false when /proc cannot be read.
func liveMember(pgid int) (live, ok bool) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false, false
	}
	want := strconv.Itoa(pgid)
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // ended meanwhile
		}
		// "pid (comm) state ppid pgrp ...": comm may hold anything, even ')'.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) >= 3 && f[2] == want && f[0] != "Z" && f[0] != "X" {
			return true, true
		}
	}
	return false, true
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

// lineWriter relays whole lines, so lines of concurrent cells don't
// interleave mid-line, with fleetd's secrets redacted: to w with the prefix
// "[id] ", or to a Lines callback.
type lineWriter struct {
	mu     sync.Mutex
	emit   func(line []byte) // a line without its newline
	redact [][]byte
	hold   int // bytes kept back when a long line is cut, so a secret across the cut is still caught
	buf    []byte
}

// maxLine bounds the buffer for output that never ends a line.
const maxLine = 64 << 10

var redacted = []byte("[REDACTED]")

func (r *Runner) newLineWriter(w io.Writer, id, stream string) *lineWriter {
	l := &lineWriter{}
	for _, v := range r.Redact {
		if v != "" {
			l.redact = append(l.redact, []byte(v))
			l.hold = max(l.hold, len(v)-1)
		}
	}
	l.emit = r.relay(w, id, stream)
	if r.Output != nil {
		relay := l.emit
		l.emit = func(line []byte) {
			relay(line)
			r.Output(id, stream, string(line))
		}
	}
	return l
}

// relay is where a line goes: the Lines callback, or w with the id prefix.
func (r *Runner) relay(w io.Writer, id, stream string) func(line []byte) {
	if r.Lines != nil {
		return func(line []byte) { r.Lines(id, stream, string(line)) }
	}
	if w == nil {
		w = io.Discard
	}
	prefix := []byte(idPrefix(id))
	return func(line []byte) {
		out := make([]byte, 0, len(prefix)+len(line)+1)
		out = append(append(append(out, prefix...), line...), '\n')
		_, _ = w.Write(out)
	}
}

// idPrefix is "[id] ", the id quoted when it holds a character that could
// forge a line (a newline) or hide in one (other control and non-printing
// characters, ']').
func idPrefix(id string) string {
	if !utf8.ValidString(id) || strings.ContainsFunc(id, func(r rune) bool { return !unicode.IsPrint(r) || r == ']' }) {
		id = strconv.Quote(id)
	}
	return "[" + id + "] "
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			if len(l.buf) >= maxLine {
				l.buf = l.redacted(l.buf)
				cut := max(len(l.buf)-l.hold, 1)
				l.emit(l.buf[:cut])
				l.buf = append(l.buf[:0], l.buf[cut:]...)
			}
			return len(p), nil
		}
		l.emit(l.redacted(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
}

func (l *lineWriter) redacted(b []byte) []byte {
	for _, v := range l.redact {
		if bytes.Contains(b, v) {
			b = bytes.ReplaceAll(b, v, redacted)
		}
	}
	return b
}

func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.emit(l.redacted(l.buf))
		l.buf = nil
	}
}
