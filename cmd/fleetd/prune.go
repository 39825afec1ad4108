package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/store"
)

// pruneFlags are fleetd prune's own flags.
type pruneFlags struct {
	olderThan duration
	state     string
	dryRun    bool
}

var pruneTool = toolOf[pruneFlags]{
	usage: "fleetd prune --older-than DURATION [--state completed|failed] [--dry-run] [--json]\n\n" +
		"Deletes results (completed/, failed/, or both) older than DURATION (90s, 15m, 2h,\n" +
		"7d), each under its spec's lease. An S3 lifecycle rule can do the same: see\n" +
		"docs/operations.md, \"Queue tools\".",
	flags: func(fs *flag.FlagSet, tf *pruneFlags) {
		fs.Var(&tf.olderThan, "older-than", "delete results last written longer ago than this (90s, 15m, 2h, 7d)")
		fs.StringVar(&tf.state, "state", "", "completed or failed (default: both)")
		fs.BoolVar(&tf.dryRun, "dry-run", false, "count what would be deleted, delete nothing")
	},
	args: func(tf *pruneFlags, args []string) error {
		switch {
		case len(args) > 0:
			return fmt.Errorf("unexpected argument %q", args[0])
		case tf.olderThan <= 0:
			return fmt.Errorf("--older-than is required")
		case tf.state != "" && tf.state != string(store.Completed) && tf.state != string(store.Failed):
			return fmt.Errorf("--state is completed or failed, not %q", tf.state)
		}
		return nil
	},
	run: func(ctx context.Context, t *toolEnv, f *pruneFlags, _ []string) (any, error) {
		states := []store.Area{store.Completed, store.Failed}
		if f.state != "" {
			states = []store.Area{store.Area(f.state)}
		}
		return t.admin.Prune(ctx, states, time.Duration(f.olderThan), f.dryRun)
	},
	text: func(w io.Writer, result any) {
		var parts []string
		for _, p := range result.([]admin.Pruned) {
			parts = append(parts, fmt.Sprintf("%s: %d deleted of %d older", p.State, p.Deleted, p.Matched))
		}
		fmt.Fprintln(w, strings.Join(parts, "; "))
	},
}
