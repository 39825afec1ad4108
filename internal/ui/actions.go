package ui

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// actionTimeout bounds an action once it has started.
const actionTimeout = time.Minute

// action wraps a POST that changes the queue: refused unless actions are on
// and the request passes the CSRF checks; then it runs, and the browser is
// sent back to the page (POST, redirect, GET), which shows what happened once.
func (s *Server) action(run func(r *http.Request) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.cfg.AllowActions {
			http.Error(w, "fleetd ui: actions are off; start fleetd ui with --allow-actions", http.StatusForbidden)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
		if err := s.secrets.checkPost(r); err != nil {
			s.cfg.Logger.Warn("ui action refused", "event", "ui.action_refused", "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
			http.Error(w, "fleetd ui: refused: "+err.Error(), http.StatusForbidden)
			return
		}
		// An action is not half-done because the browser hung up: it runs to
		// its end (bounded), apart from the request's context.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), actionTimeout)
		msg, err := run(r.WithContext(ctx))
		cancel()
		s.invalidate()
		log := s.cfg.Logger.With("action", strings.TrimPrefix(r.URL.Path, "/"), "remote", r.RemoteAddr)
		if id := r.PostFormValue("id"); id != "" {
			log = log.With("spec_id", id)
		}
		if err != nil {
			log.Warn("ui action failed", "event", "ui.action_failed", "err", err)
			setFlash(w, err.Error(), true)
		} else {
			log.Info("ui action", "event", "ui.action", "result", msg)
			setFlash(w, msg, false)
		}
		http.Redirect(w, r, "/", http.StatusSeeOther)
	}
}

// specID is the form's spec id, checked as every tool checks one.
func (s *Server) specID(r *http.Request) (string, error) {
	id := r.PostFormValue("id")
	if err := s.cfg.Layout.CheckID(id); err != nil {
		return "", fmt.Errorf("%q is not a spec id: %w", id, err)
	}
	return id, nil
}

func (s *Server) requeue(r *http.Request) (string, error) {
	id, err := s.specID(r)
	if err != nil {
		return "", err
	}
	if _, err := s.cfg.Admin.Requeue(r.Context(), []string{id}, false, 0); err != nil {
		return "", err
	}
	return "requeued " + id, nil
}

func (s *Server) cancel(r *http.Request) (string, error) {
	id, err := s.specID(r)
	if err != nil {
		return "", err
	}
	res, err := s.cfg.Admin.Cancel(r.Context(), id, s.cfg.By)
	switch {
	case err != nil:
		return "", err
	case res.Filed:
		return fmt.Sprintf("cancelled %s: it was waiting (pending or delayed); filed under failed/", id), nil
	default:
		return fmt.Sprintf("cancel of %s requested: node %s stops it within a lease renewal period", id, res.Node), nil
	}
}

func (s *Server) pause(r *http.Request) (string, error) {
	lanes, err := s.cfg.Admin.Pause(r.Context(), s.cfg.Prefix, false, s.cfg.By)
	if err != nil {
		return "", err
	}
	return "paused " + strings.Join(lanes, ", "), nil
}

func (s *Server) resume(r *http.Request) (string, error) {
	lanes, err := s.cfg.Admin.Resume(r.Context(), s.cfg.Prefix, false)
	if err != nil {
		return "", err
	}
	return "resumed " + strings.Join(lanes, ", "), nil
}
