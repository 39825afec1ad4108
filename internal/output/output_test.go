package output

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestTailKeepsTheLastBytesInOrder(t *testing.T) {
	for _, tt := range []struct {
		name      string
		n         int
		lines     []string
		want      string
		truncated bool
	}{
		{"empty", 8, nil, "", false},
		{"fits", 8, []string{"ab", "cd"}, "ab\ncd\n", false},
		{"exactly", 6, []string{"ab", "cd"}, "ab\ncd\n", false},
		{"wraps", 5, []string{"ab", "cd"}, "b\ncd\n", true},
		{"wraps twice", 4, []string{"a", "b", "c", "d", "e"}, "d\ne\n", true},
		{"one long line", 4, []string{"abcdefgh"}, "fgh\n", true},
		{"long after short", 4, []string{"x", "abcdefgh", "y"}, "h\ny\n", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tl := NewTail(tt.n)
			for _, l := range tt.lines {
				tl.Line(l)
			}
			got, trunc := tl.Bytes()
			if string(got) != tt.want || trunc != tt.truncated {
				t.Errorf("Bytes() = %q, %v; want %q, %v", got, trunc, tt.want, tt.truncated)
			}
		})
	}
}

// A reference model: the tail is the suffix of everything written.
func TestTailMatchesTheSuffixOfAllOutput(t *testing.T) {
	for n := 1; n < 40; n++ {
		tl := NewTail(n)
		var all strings.Builder
		for i := range 50 {
			l := strings.Repeat(string(rune('a'+i%26)), i%13)
			tl.Line(l)
			all.WriteString(l + "\n")
		}
		want := all.String()
		want = want[max(0, len(want)-n):]
		if got, _ := tl.Bytes(); string(got) != want {
			t.Fatalf("n=%d: got %q, want %q", n, got, want)
		}
	}
}

func TestTailsByID(t *testing.T) {
	ts := NewTails(1 << 10)
	ts.Line("a", "stdout", "before open") // dropped: not kept
	ts.Open("a")
	ts.Open("b")
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() { ts.Line("a", "stdout", fmt.Sprint("line ", i)) })
	}
	wg.Wait()
	ts.Line("b", "stderr", "bee")
	a, trunc, ok := ts.Take("a")
	if !ok || trunc || bytes.Count(a, []byte("\n")) != 10 || bytes.Contains(a, []byte("before")) {
		t.Errorf("a: %q %v %v", a, trunc, ok)
	}
	if b, _, ok := ts.Take("b"); !ok || string(b) != "bee\n" {
		t.Errorf("b: %q %v", b, ok)
	}
	if _, _, ok := ts.Take("a"); ok {
		t.Error("a taken twice")
	}
	off := NewTails(0)
	off.Open("c")
	off.Line("c", "stdout", "x")
	if _, _, ok := off.Take("c"); ok {
		t.Error("output off, but kept")
	}
}
