// Package output keeps the tail of each running cell's output: the last n
// bytes of its supervisor's stdout and stderr lines, in the order they were
// relayed and redacted as they were relayed, so a spec's result can carry
// what its cell printed.
package output

import (
	"sync"
)

// Tail is the last n bytes written to it. It is safe for concurrent use.
type Tail struct {
	mu    sync.Mutex
	n     int
	buf   []byte // a ring of n bytes once full
	start int    // where the oldest byte is, once full
	total int64
}

// NewTail returns a tail that keeps the last n bytes (n > 0).
func NewTail(n int) *Tail { return &Tail{n: n} }

// Line appends line and a newline.
func (t *Tail) Line(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.write(line)
	t.write("\n")
}

func (t *Tail) write(s string) {
	t.total += int64(len(s))
	if len(s) >= t.n {
		// Only the end of s survives: start the ring afresh from it.
		t.buf = append(t.buf[:0], s[len(s)-t.n:]...)
		t.start = 0
		return
	}
	if room := t.n - len(t.buf); room > 0 {
		k := min(room, len(s))
		t.buf = append(t.buf, s[:k]...)
		s = s[k:]
	}
	for len(s) > 0 {
		k := copy(t.buf[t.start:], s)
		s = s[k:]
		t.start = (t.start + k) % t.n
	}
}

// Bytes returns the bytes kept, oldest first, and whether earlier ones were
// dropped.
func (t *Tail) Bytes() (b []byte, truncated bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b = make([]byte, 0, len(t.buf))
	b = append(append(b, t.buf[t.start:]...), t.buf[:t.start]...)
	return b, t.total > int64(len(b))
}

// Tails holds the tail of each cell running on this node, by spec id: a node
// runs an id at most once at a time.
type Tails struct {
	n     int
	mu    sync.Mutex
	cells map[string]*Tail
}

// NewTails returns tails of n bytes each; n <= 0 keeps nothing (output off).
func NewTails(n int) *Tails { return &Tails{n: n, cells: map[string]*Tail{}} }

// Open starts keeping id's output. It is a no-op when output is off.
func (ts *Tails) Open(id string) {
	if ts == nil || ts.n <= 0 {
		return
	}
	ts.mu.Lock()
	ts.cells[id] = NewTail(ts.n)
	ts.mu.Unlock()
}

// Line records a relayed line of id's output; it fits exec.Runner.Output.
// Lines of an id not opened are dropped.
func (ts *Tails) Line(id, _ /* stream */, line string) {
	ts.mu.Lock()
	t := ts.cells[id]
	ts.mu.Unlock()
	if t != nil {
		t.Line(line)
	}
}

// Take stops keeping id's output and returns it; ok is false when it was not
// kept (output off).
func (ts *Tails) Take(id string) (b []byte, truncated, ok bool) {
	if ts == nil {
		return nil, false, false
	}
	ts.mu.Lock()
	t := ts.cells[id]
	delete(ts.cells, id)
	ts.mu.Unlock()
	if t == nil {
		return nil, false, false
	}
	b, truncated = t.Bytes()
	return b, truncated, true
}
