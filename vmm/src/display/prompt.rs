//! A question securevm asks on the screen (the login's user id and
//! passphrase, a smart card's PIN): the fields being edited from the
//! viewer's key events, drawn into securevm's own screen. The answers
//! never pass through the guest, and secrets stay in [`SecretBuf`]s.

use super::line_editor::{EditOutcome, LineEditor};
use super::screen::{self, Field, PromptScreen};
use super::state::Canvas;
use crate::console::PromptPhrase;
use crate::storage::secret::SecretBuf;

/// Longest text a field takes (a passphrase; real PINs are far shorter).
pub const MAX_FIELD_LEN: usize = 256;

/// One field of a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub label: String,
    /// Shown masked, returned as a secret.
    pub secret: bool,
}

/// A question to put on the screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub title: String,
    pub fields: Vec<FieldSpec>,
    /// Shown under the fields: why this is asked again, what to do.
    pub message: Option<String>,
}

/// What was typed into one field.
#[derive(Debug)]
pub enum Answer {
    Text(String),
    Secret(SecretBuf),
}

/// A question being answered.
pub struct Prompt {
    question: Question,
    editors: Vec<LineEditor>,
    focus: usize,
    answered: bool,
}

impl Prompt {
    pub fn new(question: Question) -> Prompt {
        let editors = question
            .fields
            .iter()
            .map(|field| LineEditor::new(field.secret, MAX_FIELD_LEN))
            .collect();
        Prompt {
            question,
            editors,
            focus: 0,
            answered: false,
        }
    }

    pub fn is_answered(&self) -> bool {
        self.answered
    }

    /// A key from the viewer; returns whether the screen must be drawn
    /// again. Enter moves to the next field and, on the last, answers;
    /// Tab moves between fields; Escape empties the field.
    pub fn key(&mut self, keysym: u32, down: bool) -> bool {
        if self.answered {
            return false;
        }
        let count = self.editors.len();
        let Some(editor) = self.editors.get_mut(self.focus) else {
            return false;
        };
        let outcome = editor.key(keysym, down);
        let modifiers = editor.modifiers();
        let next = match outcome {
            EditOutcome::Edited => return true,
            EditOutcome::Ignored => return false,
            EditOutcome::Submitted if self.focus + 1 >= count => {
                self.answered = true;
                return true;
            }
            EditOutcome::Submitted | EditOutcome::NextField => (self.focus + 1) % count,
            EditOutcome::PreviousField => (self.focus + count - 1) % count,
            EditOutcome::Cancelled => {
                let secret = editor.is_secret();
                *editor = LineEditor::new(secret, MAX_FIELD_LEN);
                editor.set_modifiers(modifiers);
                return true;
            }
        };
        // A modifier held while the focus moves is still held there.
        self.focus = next;
        self.editors[next].set_modifiers(modifiers);
        true
    }

    /// The answers, in the order of the fields; the prompt is spent.
    pub fn take_answers(&mut self) -> Vec<Answer> {
        self.question
            .fields
            .iter()
            .zip(self.editors.iter_mut())
            .map(|(field, editor)| {
                if field.secret {
                    Answer::Secret(editor.take_secret())
                } else {
                    Answer::Text(editor.text().to_string())
                }
            })
            .collect()
    }

    /// Draws the question into `canvas`.
    pub fn draw(&self, phrase: &PromptPhrase, canvas: &mut Canvas) {
        let fields: Vec<Field> = self
            .question
            .fields
            .iter()
            .zip(self.editors.iter())
            .map(|(spec, editor)| Field {
                label: &spec.label,
                value: editor.field_value(),
            })
            .collect();
        draw_screen(
            canvas,
            &self.question.title,
            phrase,
            &fields,
            self.focus,
            self.question.message.as_deref(),
        );
    }
}

/// Draws securevm's screen with `fields` (maybe none: a notice).
pub fn draw_screen(
    canvas: &mut Canvas,
    title: &str,
    phrase: &PromptPhrase,
    fields: &[Field],
    focus: usize,
    message: Option<&str>,
) {
    // Without a phrase the screen warns that it cannot be told from a
    // guest's imitation.
    let phrase = match phrase {
        PromptPhrase::Set(text) => Some(text.as_str()),
        PromptPhrase::Missing(_) => None,
    };
    let screen = PromptScreen {
        title,
        phrase,
        fields,
        focus,
        message,
    };
    let (width, height) = (u32::from(canvas.width), u32::from(canvas.height));
    screen::draw(&screen, &mut canvas.pixels, width, height);
}
