package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/cellos/fleetd/internal/admin"
)

var inspectTool = toolOf[noFlags]{
	noDeletes: true,
	usage:     "fleetd inspect ID [--json]\n\nShows where a spec is, its result record and its lease.",
	args:      oneID[noFlags],
	run: func(ctx context.Context, t *toolEnv, _ *noFlags, args []string) (any, error) {
		in, err := t.admin.Inspect(ctx, args[0])
		if err != nil {
			return nil, err
		}
		return in, nil
	},
	text: func(w io.Writer, result any) {
		r := result.(admin.Inspection)
		fmt.Fprintf(w, "spec %s: %s\n", r.ID, strings.Join(r.States, ", "))
		keys := make([]string, 0, len(r.Record))
		for k := range r.Record {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "  %s: %s\n", k, r.Record[k])
		}
		if string(r.Lease) != "null" {
			fmt.Fprintf(w, "  lease: %s\n", r.Lease)
		}
	},
}
