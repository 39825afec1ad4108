// Command fleetd runs execution-cell specs from an S3 prefix used as a work
// queue, N at a time, handing each to a local cellos-supervisor.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/cellos/fleetd/internal/config"
)

// version is fleetd's semantic version; revision may be set with
// -ldflags "-X main.revision=abc1234", else it comes from the build info.
var (
	version  = "0.6.0"
	revision = ""
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Environ(), os.Stdin, os.Stdout, os.Stderr))
}

// run is fleetd's whole life: configure, work until signalled, drain. It
// returns the exit code: 0 after a drain, 1 on a runtime failure, 2 on bad
// usage or configuration. environ is only searched for misspelt settings.
func run(args []string, getenv func(string) string, environ []string, stdin io.Reader, stdout, stderr io.Writer) int {
	unknown := config.Unknown(environ)
	if len(args) > 0 {
		switch name := args[0]; name {
		case "help":
			if t, ok := tools[firstArg(args[1:])]; ok {
				printToolUsage(stdout, args[1], t)
			} else {
				printUsage(stdout)
			}
			return 0
		case "version":
			fmt.Fprintln(stdout, versionString())
			return 0
		default:
			if t, ok := tools[name]; ok {
				if len(unknown) > 0 {
					fmt.Fprintf(stderr, "fleetd: warning: unknown variables ignored: %s\n", config.DescribeUnknown(unknown))
				}
				return runTool(name, t, args[1:], getenv, stdin, stdout, stderr)
			}
		}
	}
	cl, err := parseCommandLine(args, getenv, nil)
	if err == nil && len(cl.args) > 0 {
		err = usagef("unexpected argument %q (see fleetd --help)", cl.args[0])
	}
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "fleetd: %v\n", err)
		if len(unknown) > 0 {
			fmt.Fprintf(stderr, "fleetd: warning: unknown variables ignored: %s\n", config.DescribeUnknown(unknown))
		}
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	case cl.version:
		fmt.Fprintln(stdout, versionString())
		return 0
	case cl.help:
		printUsage(stdout)
		return 0
	}
	return runAgent(cl.cfg, unknown, getenv, stdout, stderr)
}

// firstArg returns the first argument, or "" when there is none.
func firstArg(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

func versionString() string {
	return fmt.Sprintf("fleetd %s (%s)", version, shortRevision())
}

// shortRevision is the 7-character VCS revision fleetd was built from.
func shortRevision() string {
	rev := revision
	if rev == "" {
		rev = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					rev = s.Value
				}
			}
		}
	}
	if len(rev) > 7 {
		rev = rev[:7]
	}
	return rev
}
