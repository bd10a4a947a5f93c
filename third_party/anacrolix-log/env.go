package log

const (
	EnvRules        = "GO_LOG"
	EnvTimeFormat   = "GO_LOG_TIME_FMT"
	EnvDefaultLevel = "GO_LOG_DEFAULT_LEVEL"
	EnvReportRules  = "GO_LOG_REPORT_RULES"
	//EnvDefaultFormatter = "GO_LOG_FORMATTER"
)
