package sim

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// history is everything a scenario did, for the checker and the trace: each
// write and delete as it landed (the driver records them, one at a time), each
// run of a cell, each operator action, each crash.
type history struct {
	layout store.Layout
	// lanes are every lane's layout, the scenario's own first (a node may
	// serve a second lane, CELLOS_FLEET_LANES); ids differ across lanes.
	lanes []store.Layout
	t0    time.Time

	mu         sync.Mutex
	trace      []traceLine
	writes     []writeRec
	deletes    []deleteRec
	runs       []*runRec
	actions    []*actionRec
	crashed    map[string]time.Time // incarnation → when it died
	violations []string
}

type traceLine struct {
	t      time.Time
	who    string
	format string
	args   []any
}

type writeRec struct {
	t       time.Time
	by      *Handle
	req     int64 // the write call: its attempts may land more than once
	key     string
	state   store.Area
	id      string
	version int64
	n       int    // the submission the bytes are, from the spec's "n"
	outcome string // of a result record
	retried int    // the failed runs the spec had retried when written (fleetd-retried)
	sched   bool   // a schedule's due time, written to pending/ (fleetd-schedule)
	body    []byte
}

type deleteRec struct {
	t       time.Time
	by      *Handle
	key     string
	state   store.Area
	id      string
	version int64
}

// runRec is one run of a cell, as the fake supervisor saw it.
type runRec struct {
	node, inc string
	id        string
	n         int
	version   int64 // of pending/ the node last saw before the run
	start     time.Time
	end       time.Time // zero while running
	how       string    // exit, stopped, panic, crash, killed
	exit      int
	// frozen lists the spans in which the cell made no progress; the last
	// one's end is zero while it is frozen.
	frozen []span
}

type span struct{ from, to time.Time }

// progress returns the spans in which the run made progress: from its start
// to its end (or until), less its frozen spans.
func (r *runRec) progress(until time.Time) []span {
	end := r.end
	if end.IsZero() {
		end = until
	}
	var out []span
	from := r.start
	for _, f := range r.frozen {
		if f.from.After(from) {
			out = append(out, span{from, f.from})
		}
		if f.to.IsZero() {
			return out
		}
		from = f.to
	}
	if end.After(from) {
		out = append(out, span{from, end})
	}
	return out
}

// actionRec is one operator action.
type actionRec struct {
	kind       string // submit, resubmit, replace, cancel, requeue, prune, pause, resume
	id         string
	n          int
	start, end time.Time
	done       bool
	err        error
	// result, for cancel: "filed" or the node asked to stop it.
	result string
	h      *Handle
}

func newHistory(layout store.Layout) *history {
	return &history{layout: layout, lanes: []store.Layout{layout, store.NewLayout("fleet", laneX)}, t0: time.Now(), crashed: map[string]time.Time{}}
}

func (h *history) tracef(who, format string, args ...any) {
	h.mu.Lock()
	h.trace = append(h.trace, traceLine{time.Now(), who, format, args})
	h.mu.Unlock()
}

func (h *history) violatef(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	h.mu.Lock()
	h.violations = append(h.violations, msg)
	h.trace = append(h.trace, traceLine{time.Now(), "CHECK", "VIOLATION: %s", []any{msg}})
	h.mu.Unlock()
}

// laneX is the second lane some scenarios' nodes serve beside the
// scenario's own (CELLOS_FLEET_LANES).
const laneX = "x"

// stateDelayed stands for pending/.delayed/<due>/<id>.json in the history: a
// spec that becomes pending when due.
const stateDelayed store.Area = "delayed"

// split returns the state and id of a key of the queue, ok false for others.
func (h *history) split(key string) (store.Area, string, bool) {
	for _, l := range h.lanes {
		if id, _, err := l.ParseDelayed(key); err == nil {
			return stateDelayed, id, true
		}
		for _, s := range []store.Area{store.Pending, store.Claimed, store.Completed, store.Failed, store.Leases} {
			if id, ok := l.ID(s, key); ok {
				return s, id, true
			}
		}
	}
	return "", "", false
}

// wrote records a write that landed; the driver calls it.
func (h *history) wrote(by *Handle, req int64, key string, v int64, body []byte, meta map[string]string) {
	st, id, ok := h.split(key)
	if !ok || st == store.Leases {
		return
	}
	h.mu.Lock()
	h.writes = append(h.writes, writeRec{t: time.Now(), by: by, req: req, key: key, state: st, id: id, version: v,
		n: specN(body), outcome: meta["fleetd-outcome"], retried: atoi(meta["fleetd-retried"]), sched: meta["fleetd-schedule"] != "", body: body})
	h.mu.Unlock()
}

// deleted records a delete that landed; the driver calls it. A process may
// delete only a version it saw or wrote: an If-Match compares bytes, and a
// version it never saw is someone else's (a resubmission of the same bytes, a
// fresh result of a rerun).
func (h *history) deleted(by *Handle, key string, v int64) {
	st, id, ok := h.split(key)
	if ok {
		h.mu.Lock()
		h.deletes = append(h.deletes, deleteRec{t: time.Now(), by: by, key: key, state: st, id: id, version: v})
		h.mu.Unlock()
	}
	if strings.HasSuffix(key, "!paused") || strings.Contains(key, "/selftest/") || strings.Contains(key, "/recovery/") {
		return
	}
	if !by.hasSeen(key, v) && !h.sameWrite(by, key, v) {
		h.violatef("blind-delete: %s deleted %s %s, a version it never saw (%s)", by.name, key, fmtVer(v), by.role)
	}
}

// sameWrite reports whether version v of key landed from the same request as
// a version the deleter saw: one process's write, retried by its store after
// a lost answer, landing again with the same bytes. That is one submission
// (or one result) landing twice, not another: deleting it is not blind.
func (h *history) sameWrite(by *Handle, key string, v int64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	var w *writeRec
	for i := range h.writes {
		if h.writes[i].key == key && h.writes[i].version == v {
			w = &h.writes[i]
		}
	}
	if w == nil {
		return false
	}
	for i := range h.writes {
		o := &h.writes[i]
		if o.key == key && o.by == w.by && o.req == w.req && o.version != v && bytes.Equal(o.body, w.body) && by.hasSeen(key, o.version) {
			return true
		}
	}
	return false
}

func (h *history) startRun(r *runRec) {
	h.mu.Lock()
	h.runs = append(h.runs, r)
	h.mu.Unlock()
	h.tracef(r.inc, "CELL %s n=%d started (pending %s)", r.id, r.n, fmtVer(r.version))
}

func (h *history) endRun(r *runRec, how string, exit int) {
	h.mu.Lock()
	r.end, r.how, r.exit = time.Now(), how, exit
	h.mu.Unlock()
	h.tracef(r.inc, "CELL %s n=%d ended: %s %d", r.id, r.n, how, exit)
}

// frozen records a run's cell frozen or thawed now.
func (h *history) frozen(r *runRec, frozen bool) {
	h.mu.Lock()
	now := time.Now()
	if frozen {
		r.frozen = append(r.frozen, span{from: now})
	} else if n := len(r.frozen); n > 0 {
		r.frozen[n-1].to = now
	}
	h.mu.Unlock()
	what := "thawed"
	if frozen {
		what = "frozen"
	}
	h.tracef(r.inc, "CELL %s n=%d %s", r.id, r.n, what)
}

func (h *history) action(a *actionRec) {
	h.mu.Lock()
	h.actions = append(h.actions, a)
	h.mu.Unlock()
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// specN reads the "n" the simulator puts in every spec it submits: which
// submission the bytes are. -1 when there is none.
func specN(body []byte) int {
	i := bytes.Index(body, []byte(`"n":`))
	if i < 0 {
		return -1
	}
	rest := body[i+4:]
	j := 0
	for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	n, err := strconv.Atoi(string(rest[:j]))
	if err != nil {
		return -1
	}
	return n
}

// Trace renders the scenario's trace: virtual time since the start, who,
// what.
func (h *history) Trace() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	for _, l := range h.trace {
		fmt.Fprintf(&b, "%9.3fs %-6s ", l.t.Sub(h.t0).Seconds(), l.who)
		fmt.Fprintf(&b, l.format, l.args...)
		b.WriteByte('\n')
	}
	return b.String()
}

// logHandler puts a process's log lines into the trace: what it believed.
type logHandler struct {
	h     *history
	who   string
	attrs []slog.Attr
}

func (l *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (l *logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString("log ")
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		if a.Key == "node" {
			return true
		}
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range l.attrs {
		add(a)
	}
	r.Attrs(add)
	l.h.tracef(l.who, "%s", b.String())
	return nil
}

func (l *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{h: l.h, who: l.who, attrs: append(append([]slog.Attr{}, l.attrs...), as...)}
}

func (l *logHandler) WithGroup(string) slog.Handler { return l }
