package pipeline

import (
	"context"
	"testing"

	"github.com/cellos/fleetd/internal/exec"
	"github.com/cellos/fleetd/internal/output"
)

// The lines relayed while the cell runs go to its result as its output, the
// last Output bytes of them; output off writes none.
func TestRunOutputGoesWithTheResult(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		bytes   int
		want    string // "" with wantNil: no output
		wantNil bool
	}{
		{"kept", 8, "one\ntwo\n", false}, // the last 8 of "line one\ntwo\n"
		{"off", 0, "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tails := output.NewTails(tt.bytes)
			cfg := Config{}
			if tt.bytes > 0 {
				cfg.Output = tails
			}
			p, b := setup(t, cfg)
			b.runner.run = func(_ context.Context, _, id string, started func(exec.Cell)) exec.Result {
				started(&fakeCell{})
				// What exec.Runner.Output would be told.
				tails.Line(id, "stdout", "line one")
				tails.Line(id, "stderr", "two")
				return exec.Result{ExitCode: 3}
			}
			p.process(item)
			if len(b.claim.finished) != 1 {
				t.Fatalf("%d results", len(b.claim.finished))
			}
			got := b.claim.finished[0].Output
			switch {
			case tt.wantNil && got != nil:
				t.Errorf("output %q written with output off", got.Body)
			case !tt.wantNil && (got == nil || string(got.Body) != tt.want || !got.Truncated):
				t.Errorf("output %+v, want %q truncated", got, tt.want)
			}
			if _, _, ok := tails.Take("x"); ok {
				t.Error("the cell's tail outlived its run")
			}
		})
	}
}
