package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"
)

// requeueFlags are fleetd requeue's own flags.
type requeueFlags struct {
	failed    bool
	olderThan duration
}

var requeueTool = toolOf[requeueFlags]{
	usage: "fleetd requeue ID... | --failed [--older-than DURATION] [--json]\n\n" +
		"Moves failed specs back to pending/ with a fresh attempt count. DURATION: 90s, 15m, 2h, 7d.",
	flags: func(fs *flag.FlagSet, tf *requeueFlags) {
		fs.BoolVar(&tf.failed, "failed", false, "requeue every failed spec")
		fs.Var(&tf.olderThan, "older-than", "with --failed: only specs failed longer ago than this (90s, 15m, 2h, 7d)")
	},
	args: func(tf *requeueFlags, ids []string) error {
		switch {
		case tf.failed && len(ids) > 0:
			return fmt.Errorf("give IDs or --failed, not both")
		case !tf.failed && len(ids) == 0:
			return fmt.Errorf("give IDs or --failed")
		case tf.olderThan != 0 && !tf.failed:
			return fmt.Errorf("--older-than goes with --failed")
		}
		return nil
	},
	run: func(ctx context.Context, t *toolEnv, f *requeueFlags, ids []string) (any, error) {
		done, err := t.admin.Requeue(ctx, ids, f.failed, time.Duration(f.olderThan))
		return requeued{IDs: done}, err
	},
	text: func(w io.Writer, result any) {
		r := result.(requeued)
		for _, id := range r.IDs {
			fmt.Fprintf(w, "requeued %s\n", id)
		}
		if len(r.IDs) == 0 {
			fmt.Fprintln(w, "nothing to requeue")
		}
	},
}

type requeued struct {
	IDs []string `json:"requeued"`
}
