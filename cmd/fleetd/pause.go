package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/cellos/fleetd/internal/config"
)

var pauseTool = toolOf[laneFlags]{
	noDeletes: true,
	usage: "fleetd pause [--all] [--json]\n\n" +
		"Stops every agent on the queue lane (" + string(config.QueueName) + "; with --all, every\n" +
		"lane under the prefix) from claiming, within one poll interval. Cells running\n" +
		"finish; agents stay up, ready, and say they are paused. The state lives in the\n" +
		"bucket (pending/!paused): it survives restarts and reaches every host.",
	flags: declareLaneFlags,
	args:  noArgs[laneFlags],
	run: func(ctx context.Context, t *toolEnv, f *laneFlags, _ []string) (any, error) {
		lanes, err := t.admin.Pause(ctx, t.cfg.Prefix, f.all, cmp.Or(t.user, "someone")+"@"+t.cfg.NodeID)
		return lanesResult{Paused: lanes}, err
	},
	text: func(w io.Writer, result any) {
		for _, l := range result.(lanesResult).Paused {
			fmt.Fprintf(w, "paused %s\n", l)
		}
	},
}

var resumeTool = toolOf[laneFlags]{
	usage: "fleetd resume [--all] [--json]\n\nUndoes fleetd pause: agents claim again within one poll interval.",
	flags: declareLaneFlags,
	args:  noArgs[laneFlags],
	run: func(ctx context.Context, t *toolEnv, f *laneFlags, _ []string) (any, error) {
		lanes, err := t.admin.Resume(ctx, t.cfg.Prefix, f.all)
		return lanesResult{Resumed: lanes}, err
	},
	text: func(w io.Writer, result any) {
		for _, l := range result.(lanesResult).Resumed {
			fmt.Fprintf(w, "resumed %s\n", l)
		}
	},
}

// laneFlags are pause's and resume's own flags.
type laneFlags struct{ all bool }

func declareLaneFlags(fs *flag.FlagSet, f *laneFlags) {
	fs.BoolVar(&f.all, "all", false, "every queue lane under the prefix (those found now), and the flat layout")
}

type lanesResult struct {
	Paused  []string `json:"paused,omitempty"`
	Resumed []string `json:"resumed,omitempty"`
}
