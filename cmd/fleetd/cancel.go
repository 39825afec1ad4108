package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
)

var cancelTool = toolOf[noFlags]{
	usage: "fleetd cancel ID [--json]\n\n" +
		"Stops a spec. A pending one, and every copy waiting under pending/.delayed/ (a\n" +
		"retry's backoff, submit --in/--at), goes to failed/ with outcome cancelled, never\n" +
		"run; a running one is stopped by its node (SIGTERM, SIGKILL after the grace) and\n" +
		"filed the same way, its delayed copies with it. The node hears within a renewal period of its session (ttl/3); the tool\n" +
		"waits for that, up to two periods, and exits 1 if the node has not heard yet (it\n" +
		"will once it reaches the store). A cancel racing with the spec's completion leaves\n" +
		"exactly one result.",
	args: oneID[noFlags],
	run: func(ctx context.Context, t *toolEnv, _ *noFlags, args []string) (any, error) {
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
			fmt.Fprintf(w, "cancelled %s: it was waiting (pending or delayed); filed under failed/\n", r.ID)
			return
		}
		fmt.Fprintf(w, "cancel of %s requested: node %s stops it and files it cancelled\n", r.ID, r.Node)
	},
}

type cancelled struct {
	ID    string `json:"id"`
	By    string `json:"by"`
	Filed bool   `json:"filed"`
	Node  string `json:"node,omitempty"`
}
