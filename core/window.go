package core

import (
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // IANA zones even on hosts without /usr/share/zoneinfo
)

// Window is when a service may be deployed: on these days, between From
// and To (local time in TZ; To before From spans midnight). Rollbacks are
// never held back by it.
type Window struct {
	Days []string `json:"days"` // mon … sun
	From string   `json:"from"` // "09:00"
	To   string   `json:"to"`   // "17:00"
	TZ   string   `json:"tz"`   // IANA, e.g. "Europe/Berlin"
}

var dayNames = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ParseWindow reads --days "mon-fri" or "mon,wed,sat", --hours
// "09:00-17:00" and --tz "Europe/Berlin".
func ParseWindow(days, hours, tz string) (Window, error) {
	w := Window{TZ: tz}
	if w.TZ == "" {
		w.TZ = "UTC"
	}
	if _, err := time.LoadLocation(w.TZ); err != nil {
		return w, fmt.Errorf("window: time zone %q: %w", tz, err)
	}
	idx := func(d string) int {
		for i, n := range dayNames {
			if strings.EqualFold(d, n) {
				return i
			}
		}
		return -1
	}
	if days == "" {
		days = "mon-sun"
	}
	for _, part := range strings.Split(days, ",") {
		a, b, isRange := strings.Cut(strings.TrimSpace(part), "-")
		i, j := idx(a), idx(a)
		if isRange {
			j = idx(b)
		}
		if i < 0 || j < 0 {
			return w, fmt.Errorf("window: days %q: use mon, tue, … sun, ranges like mon-fri, or lists", days)
		}
		for k := i; ; k = (k + 1) % 7 {
			w.Days = append(w.Days, dayNames[k])
			if k == j {
				break
			}
		}
	}
	if hours == "" {
		hours = "00:00-24:00"
	}
	from, to, ok := strings.Cut(hours, "-")
	if _, err := clock(from); !ok || err != nil {
		return w, fmt.Errorf("window: hours %q: want HH:MM-HH:MM", hours)
	}
	if _, err := clock(to); err != nil {
		return w, fmt.Errorf("window: hours %q: want HH:MM-HH:MM", hours)
	}
	w.From, w.To = from, to
	return w, nil
}

// clock reads "HH:MM" as minutes after midnight (24:00 is allowed).
func clock(s string) (int, error) {
	var h, m int
	if _, err := fmt.Sscanf(s, "%d:%d", &h, &m); err != nil || h < 0 || h > 24 || m < 0 || m > 59 || (h == 24 && m > 0) {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	return h*60 + m, nil
}

// Open reports whether t falls inside the window.
func (w Window) Open(t time.Time) bool {
	loc, err := time.LoadLocation(w.TZ)
	if err != nil {
		return false
	}
	lt := t.In(loc)
	from, err1 := clock(w.From)
	to, err2 := clock(w.To)
	if err1 != nil || err2 != nil {
		return false
	}
	now := lt.Hour()*60 + lt.Minute()
	day := func(d time.Weekday) bool {
		for _, n := range w.Days {
			if n == dayNames[d] {
				return true
			}
		}
		return false
	}
	if from <= to {
		return day(lt.Weekday()) && now >= from && now < to
	}
	// Spans midnight: the evening belongs to today, the morning to yesterday.
	if now >= from {
		return day(lt.Weekday())
	}
	return now < to && day((lt.Weekday()+6)%7)
}

func (w Window) String() string {
	return fmt.Sprintf("%s %s-%s %s", strings.Join(w.Days, ","), w.From, w.To, w.TZ)
}
