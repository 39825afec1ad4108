package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/config"
)

// scheduleFlags are fleetd schedule's own flags.
type scheduleFlags struct{ cron string }

var scheduleTool = toolOf[scheduleFlags]{
	usage: "fleetd schedule add NAME --cron EXPR SPEC-FILE | schedule ls | schedule rm NAME [--json]\n\n" +
		"Periodic specs, stored under {prefix}/schedules/. At each due time the fleet submits\n" +
		"pending/NAME-<due UTC>.json to the lane of " + string(config.QueueName) + " (as it was at\n" +
		"add), once however many agents run; after a time when no agent ran, only the most\n" +
		"recent missed due time. EXPR: 5 cron fields in UTC (minute hour day-of-month month\n" +
		"day-of-week; CRON_TZ=Zone first for another zone), @hourly, @daily, @weekly,\n" +
		"@monthly, @yearly, or @every DURATION (whole seconds, due at multiples of it).",
	flags: func(fs *flag.FlagSet, tf *scheduleFlags) {
		fs.StringVar(&tf.cron, "cron", "", "schedule add: when (5 cron fields, @daily, @every 5m, ...)")
	},
	args: func(tf *scheduleFlags, args []string) error {
		if len(args) == 0 {
			return fmt.Errorf("want add, ls or rm")
		}
		switch args[0] {
		case "add":
			if len(args) != 3 {
				return fmt.Errorf("add takes NAME and SPEC-FILE")
			}
			if tf.cron == "" {
				return fmt.Errorf("add needs --cron")
			}
		case "ls":
			if len(args) != 1 {
				return fmt.Errorf("ls takes no argument")
			}
		case "rm":
			if len(args) != 2 {
				return fmt.Errorf("rm takes NAME")
			}
		default:
			return fmt.Errorf("unknown %q: want add, ls or rm", args[0])
		}
		return nil
	},
	run: func(ctx context.Context, t *toolEnv, f *scheduleFlags, args []string) (any, error) {
		switch args[0] {
		case "add":
			body, err := os.ReadFile(args[2])
			if err != nil {
				return nil, fmt.Errorf("schedule add: %w", err)
			}
			info, err := t.admin.AddSchedule(ctx, t.cfg.Prefix, t.cfg.QueueName, args[1], f.cron, admin.SpecFile{Name: args[2], Body: body})
			if err != nil {
				return nil, err
			}
			return []admin.ScheduleInfo{info}, nil
		case "rm":
			if err := t.admin.RemoveSchedule(ctx, t.cfg.Prefix, args[1]); err != nil {
				return nil, err
			}
			return []admin.ScheduleInfo{}, nil
		}
		return t.admin.Schedules(ctx, t.cfg.Prefix)
	},
	text: func(w io.Writer, result any) {
		list := result.([]admin.ScheduleInfo)
		if len(list) == 0 {
			fmt.Fprintln(w, "no schedules")
			return
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tCRON\tQUEUE\tLAST DUE (UTC)\tNEXT DUE (UTC)")
		at := func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.UTC().Format(time.RFC3339)
		}
		for _, s := range list {
			next := at(s.Next)
			if s.Error != "" {
				next = "invalid: " + s.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Cron, s.Queue, at(s.Last), next)
		}
		tw.Flush()
	},
}
