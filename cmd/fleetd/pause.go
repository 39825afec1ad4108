package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
)

var pauseTool = tool{
	noDeletes: true,
	usage: "fleetd pause [--all] [--json]\n\n" +
		"Stops every agent on the queue lane (CELLOS_FLEET_QUEUE_NAME; with --all, every\n" +
		"lane under the prefix) from claiming, within one poll interval. Cells running\n" +
		"finish; agents stay up, ready, and say they are paused. The state lives in the\n" +
		"bucket (pending/!paused): it survives restarts and reaches every host.",
	flags: laneFlags,
	args:  noArgs,
	run: func(ctx context.Context, t *toolEnv, _ []string) (any, error) {
		lanes, err := t.admin.Pause(ctx, t.cfg.Prefix, t.flags.all, cmp.Or(t.user, "someone")+"@"+t.cfg.NodeID)
		return lanesResult{Paused: lanes}, err
	},
	text: func(w io.Writer, result any) {
		for _, l := range result.(lanesResult).Paused {
			fmt.Fprintf(w, "paused %s\n", l)
		}
	},
}

var resumeTool = tool{
	usage: "fleetd resume [--all] [--json]\n\nUndoes fleetd pause: agents claim again within one poll interval.",
	flags: laneFlags,
	args:  noArgs,
	run: func(ctx context.Context, t *toolEnv, _ []string) (any, error) {
		lanes, err := t.admin.Resume(ctx, t.cfg.Prefix, t.flags.all)
		return lanesResult{Resumed: lanes}, err
	},
	text: func(w io.Writer, result any) {
		for _, l := range result.(lanesResult).Resumed {
			fmt.Fprintf(w, "resumed %s\n", l)
		}
	},
}

func laneFlags(fs *flag.FlagSet, tf *toolFlags) {
	fs.BoolVar(&tf.all, "all", false, "every queue lane under the prefix (those found now), and the flat layout")
}

type lanesResult struct {
	Paused  []string `json:"paused,omitempty"`
	Resumed []string `json:"resumed,omitempty"`
}
