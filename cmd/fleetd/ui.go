package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os/signal"
	"syscall"

	"github.com/cellos/fleetd/internal/config"
	"github.com/cellos/fleetd/internal/store"
	"github.com/cellos/fleetd/internal/ui"
)

// uiFlags are fleetd ui's own flags.
type uiFlags struct {
	listen       string
	allowRemote  bool
	allowActions bool
}

var uiTool = toolOf[uiFlags]{
	usage: "fleetd ui [--listen 127.0.0.1:8080] [--allow-remote] [--allow-actions]\n\n" +
		"Serves a dashboard of the queue: counts, what runs where, the latest failures and\n" +
		"why, the nodes. It reads the bucket with these settings; no agent needs to be\n" +
		"reachable. It runs until SIGINT or SIGTERM. Loopback only unless --allow-remote;\n" +
		"requeue, cancel and pause/resume only with --allow-actions, which on a non-loopback\n" +
		"address needs " + string(config.UIToken) + " (asked for once by a login form).",
	flags: func(fs *flag.FlagSet, tf *uiFlags) {
		fs.StringVar(&tf.listen, "listen", "127.0.0.1:8080", "address to serve on (HOST:PORT; port 0 picks a free one)")
		fs.BoolVar(&tf.allowRemote, "allow-remote", false, "serve on a non-loopback address: whoever reaches it sees the queue")
		fs.BoolVar(&tf.allowActions, "allow-actions", false, "show and accept requeue, cancel and pause/resume")
	},
	args: func(tf *uiFlags, args []string) error {
		if err := noArgs(tf, args); err != nil {
			return err
		}
		// The token is an environment variable, checked once the settings are read.
		_, err := ui.CheckListen(tf.listen, tf.allowRemote, false, "")
		return err
	},
	run: func(ctx context.Context, t *toolEnv, f *uiFlags, _ []string) (any, error) {
		token := t.getenv(string(config.UIToken))
		loopback, err := ui.CheckListen(f.listen, f.allowRemote, f.allowActions, token)
		if err != nil {
			return nil, usagef("ui: %v (see fleetd ui --help)", err)
		}
		log := newLogger(t.cfg, t.stderr).With("node", t.cfg.NodeID)
		srv, err := ui.New(ui.Config{
			Store:         t.store,
			Layout:        store.NewLayout(t.cfg.Prefix, t.cfg.QueueName),
			Bucket:        t.cfg.Bucket,
			Prefix:        t.cfg.Prefix,
			Lane:          t.cfg.QueueName,
			TTL:           t.cfg.LeaseTTL,
			Admin:         t.admin,
			AllowActions:  f.allowActions,
			By:            cmp.Or(t.user, "someone") + "@" + t.cfg.NodeID + " (fleetd ui)",
			Token:         token,
			LoopbackHosts: loopback,
			Logger:        log,
		})
		if err != nil {
			return nil, err
		}
		ln, err := net.Listen("tcp", f.listen)
		if err != nil {
			return nil, fmt.Errorf("ui: %w", err)
		}
		ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		log.Info("fleetd ui listening", "event", "ui.listening", "url", "http://"+ln.Addr().String()+"/", "actions", f.allowActions,
			"token", token != "", "bucket", t.cfg.Bucket, "prefix", t.cfg.Prefix, "queue_name", t.cfg.QueueName)
		err = srv.Serve(ctx, ln)
		log.Info("fleetd ui stopped", "event", "ui.stopped")
		return nil, err
	},
	text: func(io.Writer, any) {},
}
