package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/cellos/fleetd/internal/admin"
)

var logsTool = tool{
	noDeletes: true,
	usage: "fleetd logs ID [--lane NAME] [--json]\n\n" +
		"Prints the end of what the spec's last run printed (stdout and stderr, the\n" +
		"last CELLOS_FLEET_OUTPUT_BYTES, secrets redacted), as written beside its\n" +
		"result. Exit 1 when it has none.",
	flags: func(fs *flag.FlagSet, tf *toolFlags) {
		fs.StringVar(&tf.lane, "lane", "", "queue lane of the spec (default: CELLOS_FLEET_QUEUE_NAME)")
	},
	args: func(_ toolFlags, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("give exactly one ID")
		}
		return nil
	},
	run: func(ctx context.Context, t *toolEnv, args []string) (any, error) {
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
