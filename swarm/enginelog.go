package swarm

import (
	"context"
	"log/slog"
	"strings"

	"github.com/rs/zerolog"
)

// engineLog hands the torrent engine's log to zerolog: warnings and errors
// as warnings, and the few informational lines an operator needs (peers
// banned, pieces failing their hash) as warnings too; the rest, which is a
// lot, at debug.
type engineLog struct {
	log   zerolog.Logger
	attrs []slog.Attr
}

func newEngineLog(log zerolog.Logger) *slog.Logger {
	return slog.New(&engineLog{log: log.With().Str("component", "torrent").Logger()})
}

func (h *engineLog) Enabled(_ context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.log.GetLevel() <= zerolog.DebugLevel
}

func (h *engineLog) Handle(_ context.Context, r slog.Record) error {
	lvl := zerolog.DebugLevel
	switch {
	case r.Level >= slog.LevelError:
		lvl = zerolog.ErrorLevel
	case r.Level >= slog.LevelWarn:
		lvl = zerolog.WarnLevel
	case strings.Contains(r.Message, "ban") || strings.Contains(r.Message, "failed hash"):
		lvl = zerolog.WarnLevel
	}
	ev := h.log.WithLevel(lvl)
	if ev == nil {
		return nil
	}
	add := func(a slog.Attr) bool {
		ev = ev.Str(a.Key, a.Value.String())
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	ev.Msg(r.Message)
	return nil
}

func (h *engineLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &engineLog{log: h.log, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *engineLog) WithGroup(string) slog.Handler { return h }
