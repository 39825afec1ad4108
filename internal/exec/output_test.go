package exec

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Output gets what is relayed, redacted alike, in both relay modes.
func TestRunOutputGetsRelayedLines(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-value"
	sup := script(t, `S=s3cr3t; S="$S-value"; echo "out $S"; echo "err $S" >&2; printf 'tail'`)
	for _, mode := range []string{"writers", "lines"} {
		t.Run(mode, func(t *testing.T) {
			var mu sync.Mutex
			var relayed, got []string
			var out syncBuffer
			r := &Runner{Path: sup, Grace: time.Second, Stdout: &out, Stderr: &out, Redact: []string{secret},
				Output: func(id, stream, line string) {
					mu.Lock()
					defer mu.Unlock()
					got = append(got, id+" "+stream+" "+line)
				}}
			if mode == "lines" {
				r.Lines = func(id, stream, line string) {
					mu.Lock()
					defer mu.Unlock()
					relayed = append(relayed, id+" "+stream+" "+line)
				}
			}
			if res := r.Run(context.Background(), "spec.json", "x1", nil); !res.Succeeded() {
				t.Fatalf("run: %v", res)
			}
			slices.Sort(got)
			want := []string{"x1 stderr err [REDACTED]", "x1 stdout out [REDACTED]", "x1 stdout tail"}
			if !slices.Equal(got, want) {
				t.Errorf("Output got %q, want %q", got, want)
			}
			if mode == "lines" {
				slices.Sort(relayed)
				if !slices.Equal(relayed, want) {
					t.Errorf("Lines got %q, want what Output got", relayed)
				}
			} else if s := out.String(); strings.Contains(s, secret) || !strings.Contains(s, "[x1] out [REDACTED]") {
				t.Errorf("relayed %q", s)
			}
		})
	}
}
