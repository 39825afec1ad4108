package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
)

var cancelTool = tool{
	usage: "fleetd cancel ID [--json]\n\n" +
		"Stops a spec. A pending one goes to failed/ with outcome cancelled, never run; a\n" +
		"running one is stopped by its node within a lease renewal period (ttl/3: SIGTERM,\n" +
		"SIGKILL after the grace) and filed the same way. A cancel racing with the spec's\n" +
		"completion leaves exactly one result.",
	args: func(_ toolFlags, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("give exactly one ID")
		}
		return nil
	},
	run: func(ctx context.Context, t *toolEnv, args []string) (any, error) {
		by := cmp.Or(t.user, "someone") + "@" + t.cfg.NodeID
		res, err := t.admin.Cancel(ctx, args[0], by)
		if err != nil {
			return nil, err
		}
		return cancelled{ID: args[0], By: by, Filed: res.Filed, Node: res.Node}, nil
	},
	text: func(w io.Writer, result any) {
		r := result.(cancelled)
		if r.Filed {
			fmt.Fprintf(w, "cancelled %s: it was pending; filed under failed/\n", r.ID)
			return
		}
		fmt.Fprintf(w, "cancel of %s requested: node %s stops it within a lease renewal period\n", r.ID, r.Node)
	},
}

type cancelled struct {
	ID    string `json:"id"`
	By    string `json:"by"`
	Filed bool   `json:"filed"`
	Node  string `json:"node,omitempty"`
}
