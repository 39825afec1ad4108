package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/cellos/fleetd/internal/admin"
)

var statusTool = toolOf[noFlags]{
	noDeletes: true,
	usage:     "fleetd status [--json]\n\nCounts the specs in each state and lists those in flight, with their node and lease age.",
	args:      noArgs[noFlags],
	run: func(ctx context.Context, t *toolEnv, _ *noFlags, _ []string) (any, error) {
		st, err := t.admin.Status(ctx)
		if err != nil {
			return nil, err
		}
		return st, nil
	},
	text: func(w io.Writer, result any) {
		r := result.(admin.Status)
		if r.Paused != "" {
			fmt.Fprintf(w, "paused by %s: agents claim nothing (fleetd resume)\n", r.Paused)
		}
		count := func(st string) string {
			if r.AtLeast[st] {
				return fmt.Sprintf("≥%d", r.Counts[st])
			}
			return fmt.Sprint(r.Counts[st])
		}
		fmt.Fprintf(w, "pending %s  claimed %s  completed %s  failed %s\n",
			count("pending"), count("claimed"), count("completed"), count("failed"))
		if r.Counts["pending"] > 0 {
			fmt.Fprintf(w, "oldest pending: %s\n", seconds(r.OldestPendingSeconds))
		}
		if len(r.Delayed) > 0 {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "DELAYED (%s)\tDUE (UTC)\tIN\n", count("delayed"))
			now := time.Now()
			for _, d := range r.Delayed {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", d.ID, d.Due.UTC().Format(time.RFC3339), max(0, d.Due.Sub(now)).Round(time.Second))
			}
			tw.Flush()
		}
		if len(r.InFlight) == 0 {
			fmt.Fprintln(w, "in flight: none")
			return
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "IN FLIGHT\tNODE\tATTEMPT\tSTATE\tLEASE AGE")
		for _, f := range r.InFlight {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", f.ID, f.Node, f.Attempts, f.State, seconds(f.LeaseAgeSeconds))
		}
		tw.Flush()
	},
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
