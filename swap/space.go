package swap

import (
	"errors"
	"fmt"
	"syscall"
)

// ErrNoSpace: the file system has less free space than a step needs.
var ErrNoSpace = errors.New("not enough free disk space")

// Space is the free bytes (available to unprivileged writers) and the
// total size of dir's file system.
func Space(dir string) (free, total int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("swap: free space of %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}

// FreeBytes is the space available on dir's file system.
func FreeBytes(dir string) (int64, error) {
	free, _, err := Space(dir)
	return free, err
}

// CheckFree returns ErrNoSpace, saying what needs how much, unless dir's
// file system has at least need bytes free.
func CheckFree(dir string, need int64, what string) error {
	free, err := FreeBytes(dir)
	if err != nil {
		return err
	}
	if free < need {
		return fmt.Errorf("%w for %s: needs %s, %s free on the file system of %s; free space (or lower keep_releases) and deploy again",
			ErrNoSpace, what, human(need), human(free), dir)
	}
	return nil
}

func human(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}
