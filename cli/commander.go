package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-deploy/shoal/agent"
	"github.com/shoal-deploy/shoal/core"
	"github.com/shoal-deploy/shoal/signal"
)

// The deploy commander: `shoal deploy SERVICE BUILD --stages ...` drives a
// staged rollout (see core.Rollout). Every host prefetches at once; the
// commander promotes stage by stage once every host of the stage is
// active and healthy, every other host has the build prefetched, the
// stage has baked, and every gate passes. A failing gate rolls the whole
// fleet back to the previous build (on disk everywhere: no transfer) and
// the command exits 1 with the gate, the value and the limit in one line.
// The rollout's state is the release record in Consul; a commander holds
// the service's commander lock while it drives, and `--resume` picks a
// rollout up where a dead commander left it.

// hotfixBake is --hotfix's bake time (the gates still run).
const hotfixBake = 10 * time.Second

type commander struct {
	env     Env
	sig     *signal.Client
	api     *agent.Client
	c       consulFlags
	service string
	rel     *core.Release
	p       core.RolloutParams
	by      string
	asJSON  bool
	keep    int
	metric  *metricGate
	// started is when the current stage began waiting for its hosts.
	started time.Time
}

// event is one line of progress (--json prints them as JSON lines).
type event struct {
	At      time.Time          `json:"at"`
	Event   string             `json:"event"`
	Service string             `json:"service"`
	Build   string             `json:"build"`
	Stage   string             `json:"stage,omitempty"`
	StageNo int                `json:"stage_no"`
	Stages  int                `json:"stages"`
	Counts  map[string]int     `json:"counts,omitempty"`
	Bake    string             `json:"bake,omitempty"`
	Gates   map[string]float64 `json:"gates,omitempty"`
	Message string             `json:"message,omitempty"`
}

func (k *commander) emit(e event) {
	e.At, e.Service, e.Build = time.Now().UTC(), k.service, k.rel.Build
	if ro := k.rel.Rollout; ro != nil {
		e.StageNo, e.Stages = ro.Stage+1, len(ro.Stages)
		e.Stage = ro.StageName()
	}
	if k.asJSON {
		b, _ := json.Marshal(e)
		fmt.Fprintln(k.env.Stdout, string(b))
		return
	}
	fmt.Fprintf(k.env.Stdout, "%s %s\n", e.At.Format("15:04:05"), e.Message)
}

func (k *commander) history(e signal.HistoryEntry) {
	e.By, e.Build, e.Seq = k.by, k.rel.Build, k.rel.Seq
	if ro := k.rel.Rollout; ro != nil {
		e.Rollout = ro.ID
		if e.Stage == "" {
			e.Stage = ro.StageName()
		}
	}
	if err := k.sig.AppendHistory(context.Background(), k.service, e, k.keep); err != nil {
		fmt.Fprintf(k.env.Stderr, "warning: cannot record %s in the history: %v\n", e.Event, err)
	}
}

// drive runs the rollout from its current stage to the end.
func (k *commander) drive(ctx context.Context, lock *signal.CommanderLock) error {
	ro := k.rel.Rollout
	for {
		if handGo := k.p.Step && ro.Params.Waiting == ro.Stage+1; !handGo {
			ok, err := k.runStage(ctx, lock)
			if err != nil || !ok {
				return err
			}
			if k.p.Step && ro.Stage < len(ro.Stages)-1 {
				r, err := k.sig.UpdateParams(ctx, k.service, ro.ID, func(p *core.RolloutParams) { p.Waiting = ro.Stage + 1 })
				if err != nil {
					return k.aborted(err)
				}
				k.rel = r
				k.history(signal.HistoryEntry{Event: "baked", Outcome: "waiting"})
				k.emit(event{Event: "waiting", Message: fmt.Sprintf("%s baked; `shoal deploy --resume %s` promotes it to stage %d (%s)",
					ro.Where(), k.service, ro.Stage+2, ro.Stages[ro.Stage+1])})
				return nil
			}
		}
		if ro.Stage == len(ro.Stages)-1 {
			break
		}
		next, err := k.sig.Promote(ctx, k.service, ro.ID, ro.Stage+1)
		if err != nil {
			return k.aborted(err)
		}
		k.rel, ro = next, next.Rollout
		k.history(signal.HistoryEntry{Event: "promote", Outcome: "ok"})
		k.emit(event{Event: "promote", Message: fmt.Sprintf("promoted %s %s to %s", k.service, k.rel.Build, ro.Where())})
	}
	done, err := k.sig.FinishRollout(ctx, k.service, ro.ID)
	if err != nil {
		return k.aborted(err)
	}
	k.history(signal.HistoryEntry{Event: "completed", Outcome: "ok", Stage: ro.Stages[len(ro.Stages)-1]})
	k.rel = done
	k.emit(event{Event: "completed", Message: fmt.Sprintf("%s %s rolled out to every stage (release #%d)", k.service, done.Build, done.Seq)})
	return nil
}

// runStage waits for the current stage to settle and bake with every gate
// passing. It returns false (and nil) if the rollout is paused, and an
// error once it rolled the fleet back or was aborted.
func (k *commander) runStage(ctx context.Context, lock *signal.CommanderLock) (bool, error) {
	ro := k.rel.Rollout
	k.started = time.Now()
	var bakeFrom time.Time
	tick := time.NewTicker(k.p.Interval.D())
	defer tick.Stop()
	last := ""
	for {
		cur, err := k.sig.Release(ctx, k.service)
		switch {
		case err != nil && ctx.Err() != nil:
			return false, ctx.Err()
		case err != nil:
			k.emit(event{Event: "warning", Message: "cannot read the release (retrying): " + err.Error()})
		case cur.Seq != k.rel.Seq || cur.Rollout == nil || cur.Rollout.ID != ro.ID || cur.Rollout.Stage != ro.Stage:
			return false, k.aborted(fmt.Errorf("release #%d is now %s by %s (%s)", cur.Seq, cur.Build, cur.By, describe(cur)))
		case cur.Rollout.Params.Paused:
			k.history(signal.HistoryEntry{Event: "paused"})
			k.emit(event{Event: "paused", Message: fmt.Sprintf("rollout paused at %s; `shoal deploy --resume %s` drives it on", ro.Where(), k.service)})
			return false, nil
		}
		rows, err := fleetRows(ctx, k.api, k.service)
		if err == nil {
			rows, err = withExpected(ctx, k.c, rows, k.service)
		}
		if err != nil {
			k.emit(event{Event: "warning", Message: "cannot read the fleet (retrying): " + err.Error()})
		} else {
			st := tally(rows, k.rel)
			gates := map[string]float64{"failed": float64(st.failed)}
			limit, lerr := maxFailed(k.p.MaxFailed, st.inStage)
			if lerr != nil {
				return false, lerr
			}
			if st.failed > limit {
				return false, k.rollBack(ctx, "failed-hosts", strconv.Itoa(st.failed), strconv.Itoa(limit),
					fmt.Sprintf("hosts failed: %s", strings.Join(st.failedHosts, ", ")))
			}
			if k.p.Check != "" {
				code, out := runCheck(ctx, k.p.Check, k.p.Interval.D(), k.rel, ro)
				gates["check"] = float64(code)
				if code != 0 {
					return false, k.rollBack(ctx, "check", "exit "+strconv.Itoa(code), "exit 0", strings.TrimSpace(out))
				}
			}
			if k.metric != nil {
				v, err := k.metric.sample(ctx)
				if err != nil {
					k.emit(event{Event: "warning", Message: "metric: " + err.Error()})
				} else {
					gates["metric"] = v
					if why := k.metric.judge(v); why != "" {
						return false, k.rollBack(ctx, "metric", strconv.FormatFloat(v, 'g', 6, 64), why, k.p.Metric)
					}
				}
			}
			msg := fmt.Sprintf("%s: %d/%d hosts of the stage active on %s, %d/%d others on %s with %s prefetched",
				ro.Where(), st.activeInStage, st.inStage, k.rel.Build, st.prefetched, st.held, k.rel.Previous, k.rel.Build)
			if st.down+st.pending > 0 {
				msg += fmt.Sprintf("; waiting for %d (%s)", st.down+st.pending, strings.Join(st.waiting, ", "))
			}
			bake := ""
			if st.settled {
				if bakeFrom.IsZero() {
					bakeFrom = time.Now()
				}
				left := k.p.Bake.D() - time.Since(bakeFrom)
				if left <= 0 {
					k.emit(event{Event: "baked", Counts: st.counts(), Gates: gates, Message: msg + "; baked"})
					return true, nil
				}
				bake = left.Round(time.Second).String()
				msg += "; baking, " + bake + " left"
			} else {
				bakeFrom = time.Time{}
			}
			if msg != last || k.asJSON {
				k.emit(event{Event: "progress", Counts: st.counts(), Bake: bake, Gates: gates, Message: msg})
				last = msg
			}
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("interrupted at %s; the rollout holds there: `shoal deploy --resume %s`", ro.Where(), k.service)
		case <-lock.Lost:
			return false, fmt.Errorf("lost the commander lock (Consul unreachable?); the rollout holds at stage %d: `shoal deploy --resume %s`", ro.Stage+1, k.service)
		case <-tick.C:
		}
	}
}

// rollBack rolls the whole fleet back to the previous build after a gate
// failed, waits (briefly) for the fleet to get there, and returns the
// one-line error the command exits with.
func (k *commander) rollBack(ctx context.Context, gate, value, limit, detail string) error {
	ro := k.rel.Rollout
	line := fmt.Sprintf("gate %s failed at %s of %s %s: %s (limit %s)", gate, ro.Where(), k.service, k.rel.Build, value, limit)
	if detail != "" {
		line += ": " + detail
	}
	k.history(signal.HistoryEntry{Event: "gate-failed", Gate: gate, Value: value, Limit: limit, Outcome: "rollback", Detail: detail})
	start := time.Now()
	back, err := k.sig.Rollback(ctx, k.service, k.by, line)
	if err != nil {
		return fmt.Errorf("%s; ROLLBACK FAILED: %w; roll back by hand: shoal rollback %s", line, err, k.service)
	}
	k.rel = back
	k.history(signal.HistoryEntry{Event: "rollback", Outcome: "ok", Detail: line})
	k.emit(event{Event: "rollback", Message: "rolling the whole fleet back to " + back.Build + ": " + line})
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for wctx.Err() == nil {
		rows, err := fleetRows(wctx, k.api, k.service)
		if err == nil {
			if done, _, _ := settled(rows, back); done {
				k.emit(event{Event: "rolled-back", Message: fmt.Sprintf("fleet back on %s %.1f s after the gate failed", back.Build, time.Since(start).Seconds())})
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New(line + "; rolled back to " + back.Build)
}

func (k *commander) aborted(err error) error {
	k.history(signal.HistoryEntry{Event: "aborted", Outcome: "aborted", Detail: err.Error()})
	return fmt.Errorf("rollout of %s %s aborted: %w", k.service, k.rel.Build, err)
}

func describe(r *core.Release) string {
	switch {
	case r.Rollback:
		return "a rollback"
	case r.Rollout != nil:
		return fmt.Sprintf("rollout %s at stage %d", r.Rollout.ID, r.Rollout.Stage+1)
	}
	return "a deploy"
}

// stageTally counts the fleet against a release at its current stage.
type stageTally struct {
	inStage, activeInStage, held, prefetched, failed, down, pending int
	failedHosts, waiting                                            []string
	settled                                                         bool
}

func (t stageTally) counts() map[string]int {
	return map[string]int{"in_stage": t.inStage, "active_in_stage": t.activeInStage, "held": t.held, "prefetched": t.prefetched,
		"failed": t.failed, "down": t.down, "pending": t.pending}
}

func tally(rows []HostRow, rel *core.Release) stageTally {
	var t stageTally
	for _, r := range rows {
		s := r.Service
		switch {
		case r.Down:
			t.down++
			t.waiting = append(t.waiting, r.Node+" down")
			continue
		case s == nil:
			t.pending++
			t.waiting = append(t.waiting, r.Node+" unreachable")
			continue
		}
		ok := handled(r, rel)
		if s.Held {
			t.held++
		} else {
			t.inStage++
		}
		switch {
		case ok && s.State == core.StateFailed:
			t.failed++
			t.failedHosts = append(t.failedHosts, r.Node+" ("+s.LastError+")")
		case ok && s.Held:
			t.prefetched++
		case ok:
			t.activeInStage++
		default:
			t.pending++
			t.waiting = append(t.waiting, fmt.Sprintf("%s %s", r.Node, s.State))
		}
	}
	t.settled = len(rows) > 0 && t.pending == 0 && t.down == 0
	return t
}

// maxFailed reads --max-failed ("2" or "10%" of the stage's hosts).
func maxFailed(spec string, hosts int) (int, error) {
	if spec == "" {
		return 0, nil
	}
	if p, ok := strings.CutSuffix(spec, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v < 0 || v > 100 {
			return 0, fmt.Errorf("--max-failed %q: want a count or a percentage", spec)
		}
		return int(math.Floor(v / 100 * float64(hosts))), nil
	}
	n, err := strconv.Atoi(spec)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("--max-failed %q: want a count or a percentage", spec)
	}
	return n, nil
}

// runCheck runs a --check command (exit 0 = healthy) with the stage in its
// environment, limited to timeout.
func runCheck(ctx context.Context, cmd string, timeout time.Duration, rel *core.Release, ro *core.Rollout) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, max(timeout, 5*time.Second))
	defer cancel()
	c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
	c.Env = append(os.Environ(), "SHOAL_SERVICE="+rel.Service, "SHOAL_BUILD="+rel.Build, "SHOAL_PREVIOUS="+rel.Previous,
		"SHOAL_STAGE="+ro.StageName(), "SHOAL_STAGE_NO="+strconv.Itoa(ro.Stage+1))
	out, err := c.CombinedOutput()
	if len(out) > 300 {
		out = out[len(out)-300:]
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode(), string(out)
	default:
		return -1, err.Error()
	}
}

// metricGate samples a number from a URL and judges it against a fixed
// maximum and/or its own history before the rollout (a z-score).
type metricGate struct {
	url       string
	max       *float64
	z         float64
	mean, std float64
	get       func(ctx context.Context) (float64, error)
}

func newMetricGate(url string, max *float64, z float64) *metricGate {
	g := &metricGate{url: url, max: max, z: z}
	g.get = func(ctx context.Context) (float64, error) { return fetchNumber(ctx, url) }
	return g
}

func (g *metricGate) sample(ctx context.Context) (float64, error) { return g.get(ctx) }

// learn sets the baseline from samples taken before the rollout.
func (g *metricGate) learn(xs []float64) {
	if len(xs) == 0 {
		return
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	g.mean = sum / float64(len(xs))
	var ss float64
	for _, x := range xs {
		ss += (x - g.mean) * (x - g.mean)
	}
	g.std = math.Sqrt(ss / float64(len(xs)))
}

// judge returns why v fails the gate ("" if it passes): above the fixed
// maximum, or further from the baseline's mean than z standard deviations
// (the deviation is floored at 1 % of the mean, so a flat baseline does
// not make every wobble an anomaly).
func (g *metricGate) judge(v float64) string {
	if g.max != nil && v > *g.max {
		return fmt.Sprintf("max %g", *g.max)
	}
	if g.z > 0 {
		sd := math.Max(g.std, math.Max(0.01*math.Abs(g.mean), 1e-9))
		if z := math.Abs(v-g.mean) / sd; z > g.z {
			return fmt.Sprintf("z-score %.1f > %g against the pre-rollout mean %.4g ± %.4g", z, g.z, g.mean, g.std)
		}
	}
	return ""
}

// fetchNumber GETs url and reads a number: a bare number, or the first
// value of a Prometheus HTTP API instant query.
func fetchNumber(ctx context.Context, url string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if v, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64); err == nil {
		return v, nil
	}
	var prom struct {
		Data struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if json.Unmarshal(b, &prom) == nil && len(prom.Data.Result) > 0 && len(prom.Data.Result[0].Value) == 2 {
		if s, ok := prom.Data.Result[0].Value[1].(string); ok {
			return strconv.ParseFloat(s, 64)
		}
	}
	return 0, fmt.Errorf("GET %s: not a number or a Prometheus instant vector: %.80q", url, b)
}

// plan prints which hosts each stage adds, from Consul's catalog.
func plan(ctx context.Context, env Env, sig *signal.Client, service string, stages []string, asJSON bool) error {
	hosts, err := sig.ExpectedHosts(ctx, service)
	if err != nil {
		return err
	}
	ro := &core.Rollout{Stages: stages}
	byStage := make([][]string, len(stages))
	var never []string
	for _, h := range hosts {
		if i := ro.StageOf(service, h.Node, h.Tags); i >= 0 {
			byStage[i] = append(byStage[i], h.Node)
		} else {
			never = append(never, h.Node)
		}
	}
	if asJSON {
		out := map[string]any{"service": service, "hosts": len(hosts), "never": never}
		st := []map[string]any{}
		for i, s := range stages {
			sort.Strings(byStage[i])
			st = append(st, map[string]any{"stage": s, "adds": byStage[i]})
		}
		out["stages"] = st
		return printJSON(env.Stdout, out)
	}
	total := 0
	for i, s := range stages {
		sort.Strings(byStage[i])
		total += len(byStage[i])
		fmt.Fprintf(env.Stdout, "stage %d %-12s +%d (%d of %d): %s\n", i+1, s, len(byStage[i]), total, len(hosts), strings.Join(byStage[i], " "))
	}
	if len(never) > 0 {
		fmt.Fprintf(env.Stdout, "never reached (add a last stage \"all\"): %s\n", strings.Join(never, " "))
	}
	return nil
}
