//! Where things go on the canvas, and how much of the data it shows.

pub(super) const WIDTH: f64 = 1000.0;
pub(super) const HEIGHT: f64 = 520.0;
/// The plots' horizontal extent; the legend is right of it.
pub(super) const PLOT_LEFT: f64 = 64.0;
pub(super) const PLOT_RIGHT: f64 = 704.0;
pub(super) const LEGEND_LEFT: f64 = 728.0;
/// Connections in use: top and bottom.
pub(super) const MAIN_TOP: f64 = 84.0;
pub(super) const MAIN_BOTTOM: f64 = 344.0;
/// Callers waiting: top and bottom.
pub(super) const WAIT_TOP: f64 = 368.0;
pub(super) const WAIT_BOTTOM: f64 = 452.0;

/// Sites with a band of their own; the rest share one.
pub(super) const TOP_SITES: usize = 5;
/// At most this many columns (two pixels each); longer timelines are
/// added up into time slots (means of connection time, peaks of waiting).
pub(super) const MAX_COLUMNS: usize = ((PLOT_RIGHT - PLOT_LEFT) / 2.0) as usize;
/// Characters of a site's label in the legend (monospace).
pub(super) const LABEL_CHARS: usize = 30;
