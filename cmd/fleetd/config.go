package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/cellos/fleetd/internal/config"
)

// usageError is a bad flag or setting: fleetd exits with status 2.
type usageError = config.UsageError

func usagef(format string, args ...any) error { return config.Usagef(format, args...) }

// commandLine is what one command line asked for: the settings, the
// positional arguments, and --help or --version, which read no settings.
type commandLine struct {
	cfg           config.Config
	args          []string
	help, version bool
}

// parseCommandLine reads the settings' flags and own (a tool's flags, if not
// nil), then the environment, then defaults (see config.Flags.Load).
func parseCommandLine(args []string, getenv func(string) string, own func(*flag.FlagSet)) (commandLine, error) {
	var cl commandLine
	fs := flag.NewFlagSet("fleetd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	settings := config.AddFlags(fs)
	fs.BoolVar(&cl.version, "version", false, "print the version and exit")
	fs.BoolVar(&cl.version, "V", false, "print the version and exit")
	if own != nil {
		own(fs)
	}
	positional, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cl.help = true
			return cl, nil
		}
		// The flag package names flags with one dash; the help uses two.
		msg := strings.NewReplacer("flag -", "flag --", "defined: -", "defined: --").Replace(err.Error())
		return cl, usagef("%s (see fleetd --help)", msg)
	}
	cl.args = positional
	if cl.version {
		return cl, nil // --version reads no configuration
	}
	cl.cfg, err = settings.Load(getenv)
	return cl, err
}

// parseInterleaved parses flags placed before, between or after positional
// arguments ("submit a.json --id x"); "--" ends the flags.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: fleetd [flags]                 run the agent\n"+
		"       fleetd submit FILE... [--id ID] [--replace] [--retries N] [--in DURATION | --at RFC3339] [--json]\n"+
		"       fleetd status [--json]\n"+
		"       fleetd requeue ID... | --failed [--older-than DURATION] [--json]\n"+
		"       fleetd inspect ID [--json]\n"+
		"       fleetd logs ID [--lane NAME] [--json]\n"+
		"       fleetd cancel ID [--json]\n"+
		"       fleetd pause [--all] | fleetd resume [--all]\n"+
		"       fleetd prune --older-than DURATION [--state completed|failed] [--dry-run] [--json]\n"+
		"       fleetd ui [--listen 127.0.0.1:8080] [--allow-remote] [--allow-actions]\n"+
		"       fleetd schedule add NAME --cron EXPR SPEC-FILE | schedule ls | schedule rm NAME\n"+
		"       fleetd help [TOOL] | fleetd version\n\n"+
		"fleetd runs execution-cell specs from an S3 queue. Each setting is a flag or an\n"+
		"environment variable; a flag wins over its variable. AWS credentials and region\n"+
		"come from the AWS SDK's default chain.\n\n")
	_ = config.WriteHelp(w, [4]string{"--version, -V", "", "", "print the version and exit"})
}
