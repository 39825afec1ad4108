package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/cellos/fleetd/internal/admin"
)

var submitTool = tool{
	usage: "fleetd submit FILE... [--id ID] [--replace] [--json]\n\n" +
		"Puts specs in pending/. FILE - reads one spec from standard input. The id is\n" +
		"--id, else spec.id, else the file name without .json.",
	flags: func(fs *flag.FlagSet, tf *toolFlags) {
		fs.StringVar(&tf.id, "id", "", "spec id (one FILE only; default: spec.id, else the file name)")
		fs.BoolVar(&tf.replace, "replace", false, "overwrite a pending or in-flight spec of the same id")
	},
	args: func(tf toolFlags, files []string) error {
		switch {
		case len(files) == 0:
			return fmt.Errorf("no FILE given")
		case tf.id != "" && len(files) > 1:
			return fmt.Errorf("--id needs exactly one FILE")
		}
		return nil
	},
	run: func(ctx context.Context, t *toolEnv, files []string) (any, error) {
		specs := make([]admin.SpecFile, 0, len(files))
		for _, f := range files {
			var body []byte
			var err error
			if f == "-" {
				body, err = io.ReadAll(t.stdin)
			} else {
				body, err = os.ReadFile(f)
			}
			if err != nil {
				return nil, fmt.Errorf("submit: %w", err)
			}
			specs = append(specs, admin.SpecFile{Name: f, Body: body})
		}
		return t.admin.Submit(ctx, specs, t.flags.id, t.flags.replace)
	},
	text: func(w io.Writer, result any) {
		for _, s := range result.([]admin.Submitted) {
			fmt.Fprintf(w, "submitted %s as %s\n", s.ID, s.Key)
		}
	},
}
