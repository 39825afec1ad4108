package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cellos/fleetd/internal/admin"
	"github.com/cellos/fleetd/internal/config"
)

// submitFlags are fleetd submit's own flags (--retries is the setting's:
// config.Config.SpecRetries).
type submitFlags struct {
	id      string
	replace bool
	in      duration
	at      string
}

var submitTool = toolOf[submitFlags]{
	usage: "fleetd submit FILE... [--id ID] [--replace] [--retries N] [--in DURATION | --at RFC3339] [--json]\n\n" +
		"Puts specs in pending/. FILE - reads one spec from standard input. The id is\n" +
		"--id, else spec.id, else the file name without .json. --retries N retries a\n" +
		"failed run N times (over the agents' " + string(config.Retries) + "); --in or --at delays\n" +
		"the spec (written under pending/.delayed/<due UTC>/<id>.json) until then.",
	flags: func(fs *flag.FlagSet, tf *submitFlags) {
		fs.StringVar(&tf.id, "id", "", "spec id (one FILE only; default: spec.id, else the file name)")
		fs.BoolVar(&tf.replace, "replace", false, "overwrite a pending or in-flight spec of the same id")
		fs.Var(&tf.in, "in", "do not start before this long from now (90s, 15m, 2h, 1d)")
		fs.StringVar(&tf.at, "at", "", "do not start before this time (RFC 3339, e.g. 2026-12-07T02:00:00Z)")
	},
	args: func(tf *submitFlags, files []string) error {
		switch {
		case len(files) == 0:
			return fmt.Errorf("no FILE given")
		case tf.id != "" && len(files) > 1:
			return fmt.Errorf("--id needs exactly one FILE")
		case tf.in != 0 && tf.at != "":
			return fmt.Errorf("--in and --at: give one")
		case tf.replace && (tf.in != 0 || tf.at != ""):
			return fmt.Errorf("--replace cannot go with --in or --at")
		}
		if _, err := notBefore(tf, time.Now()); err != nil {
			return err
		}
		return nil
	},
	run: func(ctx context.Context, t *toolEnv, f *submitFlags, files []string) (any, error) {
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
		nb, err := notBefore(f, time.Now())
		if err != nil {
			return nil, usagef("submit: %v", err)
		}
		return t.admin.SubmitWith(ctx, specs, f.id, admin.SubmitOptions{Replace: f.replace, Retries: t.cfg.SpecRetries, NotBefore: nb})
	},
	text: func(w io.Writer, result any) {
		for _, s := range result.([]admin.Submitted) {
			if !s.NotBefore.IsZero() {
				fmt.Fprintf(w, "submitted %s as %s, not to start before %s\n", s.ID, s.Key, s.NotBefore.UTC().Format(time.RFC3339))
				continue
			}
			fmt.Fprintf(w, "submitted %s as %s\n", s.ID, s.Key)
		}
	},
}

// notBefore is when --in or --at says the spec may start; zero: at once.
func notBefore(tf *submitFlags, now time.Time) (time.Time, error) {
	switch {
	case tf.in != 0:
		return now.Add(time.Duration(tf.in)), nil
	case tf.at != "":
		t, err := time.Parse(time.RFC3339, tf.at)
		if err != nil {
			return time.Time{}, fmt.Errorf("--at %q: want an RFC 3339 time such as 2026-12-07T02:00:00Z", tf.at)
		}
		return t, nil
	}
	return time.Time{}, nil
}
