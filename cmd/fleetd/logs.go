package main

import (
	"context"
	"flag"
	"io"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/config"
)

// logsFlags are fleetd logs' own flags.
type logsFlags struct{ lane string }

var logsTool = toolOf[logsFlags]{
	noDeletes: true,
	usage: "fleetd logs ID [--lane NAME] [--json]\n\n" +
		"Prints the end of what the spec's last run printed (stdout and stderr, the\n" +
		"last " + string(config.OutputBytes) + ", secrets redacted), as written beside its\n" +
		"result. Exit 1 when it has none.",
	flags: func(fs *flag.FlagSet, f *logsFlags) {
		fs.StringVar(&f.lane, "lane", "", "queue lane of the spec (default: "+string(config.QueueName)+")")
	},
	args: oneID[logsFlags],
	lane: func(f *logsFlags) string { return f.lane },
	run: func(ctx context.Context, t *toolEnv, _ *logsFlags, args []string) (any, error) {
		out, err := t.admin.Output(ctx, args[0])
		if err != nil {
			return nil, err
		}
		return out, nil
	},
	text: func(w io.Writer, result any) {
		_, _ = io.WriteString(w, result.(admin.SpecOutput).Output)
	},
}
